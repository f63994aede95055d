package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
)

// decodeHooks turn strings into durations and comma-separated strings
// (from PULLBROKER_* variables) into lists, and refuse a map where a list
// is expected: viper's weak decoding would otherwise take a map for a
// one-item list.
func decodeHooks() mapstructure.DecodeHookFunc {
	return mapstructure.ComposeDecodeHookFunc(
		func(from, to reflect.Type, data any) (any, error) {
			if to != reflect.TypeFor[time.Duration]() || from.Kind() != reflect.String {
				return data, nil
			}
			d, err := time.ParseDuration(data.(string))
			if err != nil {
				return nil, fmt.Errorf("%q is not a duration (for example 90s, 5m, 1h)", data)
			}
			return d, nil
		},
		func(from, to reflect.Type, data any) (any, error) {
			if to.Kind() == reflect.Slice && from.Kind() == reflect.Map {
				return nil, errors.New(`is a map, but a list is expected (items start with "- ")`)
			}
			return data, nil
		},
		mapstructure.StringToSliceHookFunc(","),
	)
}

// decodeError rewrites mapstructure's errors so that each line names the
// key (or the PULLBROKER_* variable that set it) and the offending value.
func decodeError(err error) error {
	var lines []error
	for _, de := range decodeErrors(err) {
		lines = append(lines, describeDecodeError(de))
	}
	if len(lines) == 0 {
		return err
	}
	return errors.Join(lines...)
}

// decodeErrors flattens the tree of joined errors into its DecodeErrors,
// innermost first named.
func decodeErrors(err error) []*mapstructure.DecodeError {
	var de *mapstructure.DecodeError
	if errors.As(err, &de) {
		if inner := decodeErrors(de.Unwrap()); len(inner) > 0 {
			return inner
		}
		return []*mapstructure.DecodeError{de}
	}
	var out []*mapstructure.DecodeError
	switch e := err.(type) {
	case interface{ Unwrap() []error }:
		for _, u := range e.Unwrap() {
			out = append(out, decodeErrors(u)...)
		}
	case interface{ Unwrap() error }:
		out = decodeErrors(e.Unwrap())
	}
	return out
}

func describeDecodeError(de *mapstructure.DecodeError) error {
	key, inner := de.Name(), de.Unwrap()
	if keys, ok := strings.CutPrefix(inner.Error(), "has invalid keys: "); ok {
		var quoted []string
		for _, k := range strings.Split(keys, ", ") {
			quoted = append(quoted, fmt.Sprintf("%q", k))
		}
		word := "key"
		if len(quoted) > 1 {
			word = "keys"
		}
		where := "at the top level"
		if key != "" {
			where = "in " + key
		}
		return fmt.Errorf("unknown %s %s %s (config.example.yaml lists every key)", word, strings.Join(quoted, ", "), where)
	}
	var msg string
	var pe *mapstructure.ParseError
	var ue *mapstructure.UnconvertibleTypeError
	switch {
	case errors.As(inner, &pe):
		msg = fmt.Sprintf("%s is not %s", quoteValue(pe.Value), kindName(pe.Expected.Type()))
	case errors.As(inner, &ue):
		msg = fmt.Sprintf("%s is not %s", quoteValue(ue.Value), kindName(ue.Expected.Type()))
	default:
		msg = inner.Error()
	}
	return blame(key, msg)
}

// blame prefixes msg with the key, or with the environment variable that
// set it.
func blame(key, msg string) error {
	if env := envVar(key); env != "" {
		if _, set := os.LookupEnv(env); set {
			return fmt.Errorf("%s (%s): %s", env, key, msg)
		}
	}
	return fmt.Errorf("%s: %s", key, msg)
}

// envVar is the PULLBROKER_* variable that overrides key, "" for keys no
// variable reaches (list items).
func envVar(key string) string {
	if key == "" || strings.ContainsAny(key, "[]") {
		return ""
	}
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

func quoteValue(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	switch reflect.ValueOf(v).Kind() {
	case reflect.Map:
		return "a map"
	case reflect.Slice:
		return "a list"
	}
	return fmt.Sprintf("%v", v)
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a map of keys"
	}
	return t.String()
}

// blameEnv puts the PULLBROKER_* variable in front of each validation
// error ("key: message") whose key a variable set.
func blameEnv(err error) error {
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return err
	}
	var out []error
	for _, e := range joined.Unwrap() {
		if key, msg, ok := strings.Cut(e.Error(), ": "); ok {
			out = append(out, blame(key, msg))
		} else {
			out = append(out, e)
		}
	}
	return errors.Join(out...)
}
