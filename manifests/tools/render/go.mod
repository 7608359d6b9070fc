module ambient/manifests/tools/render

go 1.19

require (
	github.com/Masterminds/semver/v3 v3.2.0
	github.com/Masterminds/sprig/v3 v3.2.3
	gopkg.in/yaml.v2 v2.4.0
)

require (
	github.com/Masterminds/goutils v1.1.1 // indirect
	github.com/google/uuid v1.3.0 // indirect
	github.com/huandu/xstrings v1.3.3 // indirect
	github.com/imdario/mergo v0.3.12 // indirect
	github.com/mitchellh/copystructure v1.2.0 // indirect
	github.com/mitchellh/reflectwalk v1.0.2 // indirect
	github.com/shopspring/decimal v1.2.0 // indirect
	github.com/spf13/cast v1.5.0 // indirect
	golang.org/x/crypto v0.4.0 // indirect
)

// Debian's Go library packages (golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v2-dev
// and their dependencies) are the sources; nothing is downloaded. overlay.json supplies the
// go.mod files those directories lack or whose test-only requirements are not packaged.
replace (
	github.com/Masterminds/goutils => /usr/share/gocode/src/github.com/Masterminds/goutils
	github.com/Masterminds/semver/v3 => /usr/share/gocode/src/github.com/Masterminds/semver
	github.com/Masterminds/sprig/v3 => /usr/share/gocode/src/github.com/Masterminds/sprig
	github.com/google/uuid => /usr/share/gocode/src/github.com/google/uuid
	github.com/huandu/xstrings => /usr/share/gocode/src/github.com/huandu/xstrings
	github.com/imdario/mergo => /usr/share/gocode/src/github.com/imdario/mergo
	github.com/mitchellh/copystructure => /usr/share/gocode/src/github.com/mitchellh/copystructure
	github.com/mitchellh/reflectwalk => /usr/share/gocode/src/github.com/mitchellh/reflectwalk
	github.com/shopspring/decimal => /usr/share/gocode/src/github.com/shopspring/decimal
	github.com/spf13/cast => /usr/share/gocode/src/github.com/spf13/cast
	golang.org/x/crypto => /usr/share/gocode/src/golang.org/x/crypto
	golang.org/x/net => /usr/share/gocode/src/golang.org/x/net
	golang.org/x/sys => /usr/share/gocode/src/golang.org/x/sys
	golang.org/x/term => /usr/share/gocode/src/golang.org/x/term
	golang.org/x/text => /usr/share/gocode/src/golang.org/x/text
	gopkg.in/yaml.v2 => /usr/share/gocode/src/gopkg.in/yaml.v2
)
