// Command scrape is the Kubernetes node run's in-cluster Prometheus
// stand-in: a static binary that the check Pod (busybox, which has no
// TLS client that checks certificates) runs to GET the metrics
// aggregator over TLS with basic auth, as Prometheus would. It also makes
// the bcrypt hash of the aggregator's password for node.sh.
//
//	scrape -cacert CA -user NAME -password-file FILE URL   # body on stdout, "HTTP <code>" on stderr
//	scrape -bcrypt < password                              # the hash on stdout
//
// Exit status: 0 for HTTP 200, 22 for another status (as curl --fail),
// 1 when no answer came (TLS or connection error).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func main() {
	os.Exit(run())
}

func run() int {
	cacert := flag.String("cacert", "", "CA certificate (PEM) that signed the server's")
	user := flag.String("user", "", "basic auth user")
	passwordFile := flag.String("password-file", "", "file holding the basic auth password")
	hash := flag.Bool("bcrypt", false, "print the bcrypt hash of the password read from stdin, and exit")
	flag.Parse()
	if *hash {
		pw, err := io.ReadAll(os.Stdin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "scrape:", err)
			return 1
		}
		h, err := bcrypt.GenerateFromPassword([]byte(strings.TrimRight(string(pw), "\n")), bcrypt.DefaultCost)
		if err != nil {
			fmt.Fprintln(os.Stderr, "scrape:", err)
			return 1
		}
		fmt.Println(string(h))
		return 0
	}
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: scrape [-cacert CA] [-user NAME -password-file FILE] URL | scrape -bcrypt < password")
		return 2
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if *cacert != "" {
		pem, err := os.ReadFile(*cacert)
		if err != nil {
			fmt.Fprintln(os.Stderr, "scrape:", err)
			return 1
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			fmt.Fprintf(os.Stderr, "scrape: no certificate in %s\n", *cacert)
			return 1
		}
	}
	req, err := http.NewRequest(http.MethodGet, flag.Arg(0), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scrape:", err)
		return 1
	}
	if *user != "" {
		pw, err := os.ReadFile(*passwordFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "scrape:", err)
			return 1
		}
		req.SetBasicAuth(*user, strings.TrimRight(string(pw), "\n"))
	}
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, Proxy: nil}}
	resp, err := c.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scrape:", err)
		return 1
	}
	defer resp.Body.Close()
	fmt.Fprintf(os.Stderr, "HTTP %d\n", resp.StatusCode)
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		fmt.Fprintln(os.Stderr, "scrape:", err)
		return 1
	}
	if resp.StatusCode != http.StatusOK {
		return 22
	}
	return 0
}
