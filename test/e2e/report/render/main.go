// Command render writes docs/RELIABILITY.md from the results the
// end-to-end scenarios wrote (make e2e runs it):
//
//	go run ./test/e2e/report/render -results DIR -out docs/RELIABILITY.md
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"github.com/otamq/otamq/test/e2e/report"
)

func main() {
	results := flag.String("results", "", "directory the scenarios wrote their results to (OTAMQ_E2E_RESULTS)")
	out := flag.String("out", "docs/RELIABILITY.md", "page to write")
	flag.Parse()
	if *results == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: render -results DIR [-out FILE]")
		os.Exit(2)
	}
	rs, err := report.Load(*results)
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
	var b bytes.Buffer
	if err := report.Render(&b, rs); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, b.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s: %d of %d scenarios ran\n", *out, len(rs), len(report.Scenarios)-1)
}
