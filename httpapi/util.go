package httpapi

import "errors"

var errTrailing = errors.New("data after the JSON object")
