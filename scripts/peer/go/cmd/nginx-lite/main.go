// Command nginx-lite stands in for registry.k8s.io/e2e-test-images/nginx and
// gcr.io/k8s-staging-cri-tools/hostnet-nginx in offline critest runs. Installed
// as /usr/sbin/nginx (so `pidof nginx` finds it), it
//   - re-execs itself with argv[0] "nginx: master process nginx -g daemon off;"
//     (critest greps /proc/1/cmdline for "master process"),
//   - writes its pid to /var/run/nginx.pid,
//   - answers 200 on every path on $PORT (default 80).
package main

import (
	"fmt"
	"net/http"
	"os"
	"syscall"
)

const title = "nginx: master process nginx -g daemon off;"

func main() {
	if os.Args[0] != title {
		if self, err := os.Executable(); err == nil {
			_ = syscall.Exec(self, append([]string{title}, os.Args[1:]...), os.Environ())
		}
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "80"
	}
	_ = os.MkdirAll("/var/run", 0o755)
	_ = os.WriteFile("/var/run/nginx.pid", []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o644)
	fmt.Printf("nginx-lite listening on :%s pid %d\n", port, os.Getpid())
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "<html><body><h1>Welcome to nginx!</h1></body></html>")
	})
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
