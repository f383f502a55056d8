// Command mkimage builds the installer image (make image) without a
// container engine, with go-containerregistry: one layer per architecture
// holding the static binaries, the contrib configs and a static busybox as
// the shell, an image per architecture, and an index of them written as an
// OCI layout and an OCI archive that `ctr images import`, `crane push
// --index` and skopeo take.
//
//	mkimage -tag REF -out DIR -arch amd64=BINDIR,BUSYBOX [-arch arm64=BINDIR,BUSYBOX] -contrib DIR
//
// DIR gets layout/ (the OCI layout) and image.tar (the same, as an archive).
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Binaries the image carries, in /opt/custom-runtime/bin.
var binaries = []string{"containerd-shim-custom-v2", "containerd-shim-custom-metrics", "containerd-shim-custom-install"}

type archFlag map[string][2]string // arch -> bin dir, busybox

func (a archFlag) String() string { return fmt.Sprint(map[string][2]string(a)) }

func (a archFlag) Set(v string) error {
	arch, rest, ok := strings.Cut(v, "=")
	dir, busybox, ok2 := strings.Cut(rest, ",")
	if !ok || !ok2 || arch == "" {
		return fmt.Errorf("-arch %q: want ARCH=BINDIR,BUSYBOX", v)
	}
	a[arch] = [2]string{dir, busybox}
	return nil
}

func main() {
	arches := archFlag{}
	tag := flag.String("tag", "", "the image's reference (registry/name:version)")
	out := flag.String("out", "_output/image", "output directory")
	contrib := flag.String("contrib", "contrib", "the configs directory (custom-shim.toml, runsc.toml)")
	flag.Var(arches, "arch", "ARCH=BINDIR,BUSYBOX (repeatable)")
	flag.Parse()
	if *tag == "" || len(arches) == 0 {
		fmt.Fprintln(os.Stderr, "mkimage: -tag and at least one -arch are required")
		os.Exit(2)
	}
	if err := run(*tag, *out, *contrib, arches); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(tag, out, contrib string, arches archFlag) error {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	names := make([]string, 0, len(arches))
	for a := range arches {
		names = append(names, a)
	}
	sort.Strings(names)
	for _, arch := range names {
		img, err := image(arch, arches[arch][0], arches[arch][1], contrib)
		if err != nil {
			return fmt.Errorf("%s: %w", arch, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}},
		})
	}
	dir := filepath.Join(out, "layout")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	// The name: OCI's ref.name, and containerd's own annotation, which
	// `ctr images import` reads for the full reference.
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag,
		"io.containerd.image.name":          tag,
	})); err != nil {
		return err
	}
	return tarDir(dir, filepath.Join(out, "image.tar"))
}

// image is one architecture's image: a single layer, the installer as its
// entrypoint.
func image(arch, binDir, busybox, contrib string) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, mode int64, src string) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: epoch}); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	}
	for _, d := range []string{"bin/", "opt/", "opt/custom-runtime/", "opt/custom-runtime/bin/", "opt/custom-runtime/contrib/", "tmp/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	for _, b := range binaries {
		if err := add("opt/custom-runtime/bin/"+b, 0o755, filepath.Join(binDir, b)); err != nil {
			return nil, err
		}
	}
	for _, c := range []string{"custom-shim.toml", "runsc.toml"} {
		if err := add("opt/custom-runtime/contrib/"+c, 0o644, filepath.Join(contrib, c)); err != nil {
			return nil, err
		}
	}
	if err := add("bin/busybox", 0o755, busybox); err != nil {
		return nil, err
	}
	for _, applet := range []string{"sh", "ls", "cat", "nsenter", "chroot"} {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Linkname: "busybox", Typeflag: tar.TypeSymlink, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = []string{"/opt/custom-runtime/bin/containerd-shim-custom-install"}
	cf.Config.Cmd = []string{"install"}
	cf.Config.Env = []string{"PATH=/opt/custom-runtime/bin:/bin"}
	return mutate.ConfigFile(img, cf)
}

// epoch: reproducible images (the same inputs give the same digests).
var epoch = time.Unix(0, 0).UTC()

// tarDir writes dir's files as a tar archive at dst (an OCI archive when
// dir is an OCI layout).
func tarDir(dir, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name, hdr.ModTime = filepath.ToSlash(rel), epoch
		if info.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
