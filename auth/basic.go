package auth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pullbroker/pullbroker/config"
)

func (s *source) startBasic(b *config.BasicCredentials) error {
	if b.Username == "" {
		return errors.New("basic: username is empty")
	}
	switch {
	case b.Password != "":
		s.rotated(basicMaterial{username: b.Username, password: b.Password}, "basic.password in the config")
		return nil
	case b.PasswordEnv != "":
		v, ok := s.opts.LookupEnv(b.PasswordEnv)
		if !ok {
			return fmt.Errorf("basic: environment variable %s is not set", b.PasswordEnv)
		}
		v = trimNewline(v)
		if v == "" {
			return fmt.Errorf("basic: environment variable %s is empty", b.PasswordEnv)
		}
		s.rotated(basicMaterial{username: b.Username, password: v}, "environment variable "+b.PasswordEnv)
		return nil
	case b.PasswordFile != "":
		return s.startFileWatch("basic password file", b.PasswordFile, func(data []byte) (material, error) {
			p := trimNewline(string(data))
			if p == "" {
				return nil, errors.New("the password file is empty")
			}
			if strings.ContainsAny(p, "\r\n") {
				return nil, errors.New("the password file has more than one line")
			}
			return basicMaterial{username: b.Username, password: p}, nil
		})
	}
	return errors.New("basic: set one of password, passwordFile, passwordEnv")
}

// trimNewline drops the line ending that `echo secret > file` and
// `kubectl create secret --from-file` leave behind. Other white space is
// kept: it may be part of the secret.
func trimNewline(s string) string {
	s = strings.TrimSuffix(s, "\n")
	return strings.TrimSuffix(s, "\r")
}
