module github.com/spf13/cast

go 1.18
