package httpapi

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The OpenAPI description and the route table agree: every registered
// route is documented, every documented operation is registered, and their
// parameters match (path wildcards, query parameters and their types).
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]struct {
			Parameters []struct {
				Name   string `yaml:"name"`
				In     string `yaml:"in"`
				Schema struct {
					Type string `yaml:"type"`
				} `yaml:"schema"`
			} `yaml:"parameters"`
			Security *[]any `yaml:"security"`
		} `yaml:"paths"`
	}
	if err := yaml.Unmarshal(OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	registered := map[string]bool{}
	for _, r := range routes {
		key := r.method + " " + r.path
		if registered[key] {
			t.Errorf("%s is in the table twice", key)
		}
		registered[key] = true
		op, ok := doc.Paths[r.path][strings.ToLower(r.method)]
		if !ok {
			t.Errorf("%s is registered but not in openapi.yaml", key)
			continue
		}
		var gotPath, gotQuery []string
		for _, p := range op.Parameters {
			switch p.In {
			case "path":
				gotPath = append(gotPath, p.Name)
			case "query":
				gotQuery = append(gotQuery, p.Name+":"+p.Schema.Type)
			}
		}
		var wantQuery []string
		for _, p := range r.query {
			wantQuery = append(wantQuery, p.name+":"+[]string{"string", "integer", "boolean"}[p.typ])
		}
		slices.Sort(gotQuery)
		slices.Sort(wantQuery)
		if !slices.Equal(gotPath, wildcards(r.path)) {
			t.Errorf("%s: path parameters %v documented, %v registered", key, gotPath, wildcards(r.path))
		}
		if !slices.Equal(gotQuery, wantQuery) {
			t.Errorf("%s: query parameters %v documented, %v registered", key, gotQuery, wantQuery)
		}
		if public := op.Security != nil && len(*op.Security) == 0; public != r.public {
			t.Errorf("%s: documented public=%v, registered public=%v", key, public, r.public)
		}
	}
	for key := range documented {
		if !registered[key] {
			t.Errorf("%s is in openapi.yaml but no such route is registered", key)
		}
	}
	if len(registered) < 40 {
		t.Fatalf("only %d routes: the table was not read", len(registered))
	}
}

// Every error code ota/admin declares has an HTTP status (a missing one
// would be answered 500).
func TestEveryCodeHasAStatus(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("../ota/admin/*.go")
	if err != nil {
		t.Fatal(err)
	}
	var codes []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, "Code") || i >= len(vs.Values) {
					continue
				}
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					v, _ := strconv.Unquote(lit.Value)
					codes = append(codes, v)
				}
			}
			return true
		})
	}
	if len(codes) < 15 {
		t.Fatalf("found only %d codes in ota/admin: %v", len(codes), codes)
	}
	for _, c := range codes {
		if _, ok := statusOf[c]; !ok {
			t.Errorf("admin code %q has no HTTP status", c)
		}
	}
}
