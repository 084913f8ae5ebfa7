package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/otamq/otamq/broker"
)

var apiEvents = flag.Int("api-events", 500, "api benchmark: registrations whose event is timed on an open stream")

// benchAPIEvents: how long a fleet event takes to reach an open HTTP API
// event stream (the console's live view): the time from a device/register
// request over HTTP to its device.registered event on the stream (the
// durable write included), and, with a second client streaming, the same.
func benchAPIEvents() error {
	n := *apiEvents
	dir, err := os.MkdirTemp("", "otamq-bench-api-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b, err := broker.New(broker.Options{DataDir: dir, TCPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		FirstOperator: "bench", FirstOperatorPassword: benchOperatorPassword, Logger: quiet, AdminRate: -1})
	if err != nil {
		return err
	}
	if err := b.Start(); err != nil {
		return err
	}
	defer func() { _ = b.Shutdown(context.Background()) }()
	base := "http://" + b.HTTPAddr()
	fmt.Printf("== api events: %d device/register over HTTP, each timed to its event on an open SSE stream (fsync on)\n", n)

	resp, err := http.Post(base+"/api/v1/login", "application/json",
		strings.NewReader(`{"id": "bench", "password": "`+benchOperatorPassword+`"}`))
	if err != nil {
		return err
	}
	var login struct {
		Result struct{ Token string }
	}
	err = json.NewDecoder(resp.Body).Decode(&login)
	_ = resp.Body.Close()
	if err != nil || login.Result.Token == "" {
		return fmt.Errorf("login: %v", err)
	}
	auth := "Bearer " + login.Result.Token
	stream := func() (chan string, func(), error) {
		req, _ := http.NewRequest("GET", base+"/api/v1/events", nil)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		ids := make(chan string, 1024)
		go func() {
			defer close(ids)
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				var fe struct{ Type, ID string }
				if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok && json.Unmarshal([]byte(line), &fe) == nil && fe.Type == "device.registered" {
					ids <- fe.ID
				}
			}
		}()
		return ids, func() { _ = resp.Body.Close() }, nil
	}
	for _, streams := range []int{1, 2} {
		var chans []chan string
		for range streams {
			ch, closeFn, err := stream()
			if err != nil {
				return err
			}
			defer closeFn()
			chans = append(chans, ch)
		}
		var lat []time.Duration
		for i := range n {
			id := fmt.Sprintf("bench-ev-%d-%d", streams, i)
			body := []byte(`{"id": "` + id + `", "role": "device"}`)
			req, _ := http.NewRequest("POST", base+"/api/v1/devices", bytes.NewReader(body))
			req.Header.Set("Authorization", auth)
			req.Header.Set("Content-Type", "application/json")
			start := time.Now()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			_ = resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("register: %s", resp.Status)
			}
			for _, ch := range chans {
				for got := range ch {
					if got == id {
						break
					}
				}
			}
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		fmt.Printf("  %d stream(s): request to event median %v, p99 %v, max %v\n", streams,
			lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)*99/100].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	}
	fmt.Println()
	return nil
}
