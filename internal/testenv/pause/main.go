// Command pause is the one program in the container images that testenv runs on a real node
// (StartNode): the Pod sandbox's pause container and every test container. There is no
// registry.k8s.io here to take the real pause image from, and no image with a shell.
//
// With no argument it waits for SIGTERM or SIGINT and exits 0, as the pause container does.
// "pause exit" exits 0 at once: a container that restarts for as long as the kubelet lets it.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	switch {
	case len(os.Args) == 1:
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
	case len(os.Args) == 2 && os.Args[1] == "exit":
	default:
		fmt.Fprintln(os.Stderr, "usage: pause [exit]")
		os.Exit(2)
	}
}
