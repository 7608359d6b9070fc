module github.com/Masterminds/goutils
