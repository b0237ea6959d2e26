module github.com/weave-sidecar/weave-sidecar/go

go 1.25.0
