// Command kstatus judges one Kubernetes object the way Flux, kpt and Argo CD's kstatus-based
// tooling do: it reads the object as JSON on stdin (as `kubectl get -o json` prints it), runs
// sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute on it and prints one line of JSON:
//
//	{"status":"InProgress|Current|Failed|Terminating|NotFound|Unknown","message":"..."}
//
// Exit status 0 when a status was computed; non-zero, with the reason on stderr, otherwise.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// Unstructured's own decoder keeps integers as int64; encoding/json would make
	// metadata.generation a float64, which Compute refuses.
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("decoding the object: %w", err)
	}
	if u.IsList() {
		return fmt.Errorf("got a %s: pass one object (kubectl get KIND NAME -o json)", u.GetKind())
	}
	res, err := status.Compute(&u)
	if err != nil {
		return fmt.Errorf("computing the status of %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return json.NewEncoder(out).Encode(struct {
		Status  string `json:"status"`
		Message string `json:"message"`
	}{res.Status.String(), res.Message})
}
