// helm-render renders a Helm v3 chart the way `helm template` does, offline, for the template
// features the charts of this repository use: values.yaml merged with -f files and --set /
// --set-string overrides; .Values, .Release, .Chart, .Capabilities.KubeVersion, .Template;
// sprig's functions plus include, tpl, required, toYaml, fromYaml; partials (_*.tpl);
// Chart.yaml's kubeVersion constraint. Not supported: subcharts, .Files, lookup,
// values.schema.json, hooks.
//
// Usage: helm-render [NAME] CHART [-n NAMESPACE] [-f VALUES.yaml]... [--set K=V]...
//
//	[--set-string K=V]... [--kube-version V]
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/semver/v3"
	"github.com/Masterminds/sprig/v3"
	"gopkg.in/yaml.v2"
)

// Chart is Chart.yaml, exposed to templates as .Chart (Helm's field names).
type Chart struct {
	APIVersion   string        `yaml:"apiVersion"`
	Name         string        `yaml:"name"`
	Version      string        `yaml:"version"`
	AppVersion   string        `yaml:"appVersion"`
	Description  string        `yaml:"description"`
	Type         string        `yaml:"type"`
	KubeVersion  string        `yaml:"kubeVersion"`
	Dependencies []interface{} `yaml:"dependencies"`
}

// KubeVersion is .Capabilities.KubeVersion.
type KubeVersion struct {
	Version, Major, Minor, GitVersion string
}

func (k KubeVersion) String() string { return k.Version }

// Capabilities is .Capabilities (the Kubernetes version only).
type Capabilities struct {
	KubeVersion KubeVersion
}

type setArg struct {
	expr        string
	forceString bool
}

type options struct {
	release, namespace, kubeVersion, chartDir string
	valueFiles                                []string
	sets                                      []setArg
}

func main() {
	opts, err := parseArgs(os.Args[1:])
	if err == nil {
		var out string
		out, err = render(opts)
		if err == nil {
			fmt.Print(out)
			return
		}
	}
	fmt.Fprintln(os.Stderr, "Error:", err)
	os.Exit(1)
}

func parseArgs(args []string) (options, error) {
	o := options{namespace: "default", kubeVersion: "v1.31.0"}
	var positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			positional = append(positional, a)
			continue
		}
		name, value, inline := strings.Cut(a, "=")
		if !inline {
			if i+1 >= len(args) {
				return o, fmt.Errorf("flag %s needs a value", name)
			}
			i++
			value = args[i]
		}
		switch name {
		case "-n", "--namespace":
			o.namespace = value
		case "-f", "--values":
			o.valueFiles = append(o.valueFiles, value)
		case "--set":
			o.sets = append(o.sets, setArg{value, false})
		case "--set-string":
			o.sets = append(o.sets, setArg{value, true})
		case "--kube-version":
			o.kubeVersion = value
		default:
			return o, fmt.Errorf("unknown flag %s", name)
		}
	}
	switch len(positional) {
	case 1:
		o.release, o.chartDir = "release-name", positional[0]
	case 2:
		o.release, o.chartDir = positional[0], positional[1]
	default:
		return o, errors.New("usage: helm-render [NAME] CHART [-n NS] [-f FILE]... [--set K=V]... [--set-string K=V]... [--kube-version V]")
	}
	return o, nil
}

// jsonLike turns what yaml.v2 decodes into what Helm's YAML loader (YAML → JSON → Go) yields:
// string-keyed maps and float64 numbers.
func jsonLike(v interface{}) interface{} {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = jsonLike(e)
		}
		return m
	case []interface{}:
		for i, e := range t {
			t[i] = jsonLike(e)
		}
		return t
	case int:
		return float64(t)
	case int64:
		return float64(t)
	case uint64:
		return float64(t)
	}
	return v
}

func readValues(file string) (map[string]interface{}, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var raw interface{}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if raw == nil {
		return map[string]interface{}{}, nil
	}
	m, ok := jsonLike(raw).(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: values must be a map", file)
	}
	return m, nil
}

// mergeMaps merges b into a (b wins), recursing into maps, as Helm merges -f files.
func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if bm, ok := v.(map[string]interface{}); ok {
			if am, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeMaps(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// coalesce fills user values with the chart's defaults; a user null deletes the default.
func coalesce(user, defaults map[string]interface{}) map[string]interface{} {
	for k, dv := range defaults {
		uv, set := user[k]
		switch {
		case !set:
			user[k] = dv
		case uv == nil:
			delete(user, k)
		default:
			um, uok := uv.(map[string]interface{})
			dm, dok := dv.(map[string]interface{})
			if uok && dok {
				user[k] = coalesce(um, dm)
			}
		}
	}
	return user
}

// splitUnescaped splits s at sep, except where sep is preceded by a backslash (kept escaped).
func splitUnescaped(s string, sep rune) []string {
	var parts []string
	var cur strings.Builder
	escaped := false
	for _, r := range s {
		switch {
		case escaped:
			if r != sep {
				cur.WriteRune('\\')
			}
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped = true
		case r == sep:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	if escaped {
		cur.WriteRune('\\')
	}
	return append(parts, cur.String())
}

// typed infers a --set value's type as Helm does: booleans, null, integers without a leading
// zero; everything else is a string.
func typed(v string, forceString bool) interface{} {
	switch {
	case forceString:
		return v
	case strings.EqualFold(v, "true"):
		return true
	case strings.EqualFold(v, "false"):
		return false
	case strings.EqualFold(v, "null"):
		return nil
	case v == "0":
		return int64(0)
	}
	if v != "" && v[0] != '0' {
		if i, err := strconv.ParseInt(v, 10, 64); err == nil {
			return i
		}
	}
	return v
}

// applySet applies one --set expression: comma-separated key=value pairs, dotted keys
// (`\.` and `\,` escape), `{a,b}` lists.
func applySet(vals map[string]interface{}, s setArg) error {
	for _, pair := range splitCommas(s.expr) {
		key, value, ok := strings.Cut(pair, "=")
		if !ok || key == "" {
			return fmt.Errorf("--set %q: expected key=value", pair)
		}
		var v interface{}
		if strings.HasPrefix(value, "{") && strings.HasSuffix(value, "}") {
			list := []interface{}{}
			if inner := value[1 : len(value)-1]; inner != "" {
				for _, e := range splitUnescaped(inner, ',') {
					list = append(list, typed(e, s.forceString))
				}
			}
			v = list
		} else {
			v = typed(strings.ReplaceAll(value, `\,`, ","), s.forceString)
		}
		if strings.ContainsAny(key, "[]") {
			return fmt.Errorf("--set %q: list indexes are not supported", pair)
		}
		keys := splitUnescaped(key, '.')
		m := vals
		for _, k := range keys[:len(keys)-1] {
			next, ok := m[k].(map[string]interface{})
			if !ok {
				next = map[string]interface{}{}
				m[k] = next
			}
			m = next
		}
		m[keys[len(keys)-1]] = v
	}
	return nil
}

// splitCommas splits a --set expression into pairs at commas outside `{...}` and not escaped.
func splitCommas(s string) []string {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '{':
			depth++
		case '}':
			depth--
		case ',':
			if depth == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	return append(parts, s[start:])
}

func toYAML(v interface{}) string {
	// Helm marshals through JSON (sigs.k8s.io/yaml): key order and number forms follow.
	j, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var o interface{}
	if err := yaml.Unmarshal(j, &o); err != nil {
		return ""
	}
	out, err := yaml.Marshal(o)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(out), "\n")
}

func fromYAML(s string) map[string]interface{} {
	var raw interface{}
	if err := yaml.Unmarshal([]byte(s), &raw); err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	m, _ := jsonLike(raw).(map[string]interface{})
	if m == nil {
		m = map[string]interface{}{}
	}
	return m
}

func parseKubeVersion(v string) (KubeVersion, error) {
	sv, err := semver.NewVersion(v)
	if err != nil {
		return KubeVersion{}, fmt.Errorf("--kube-version %q: %w", v, err)
	}
	full := "v" + sv.String()
	return KubeVersion{
		Version:    full,
		Major:      strconv.FormatUint(sv.Major(), 10),
		Minor:      strconv.FormatUint(sv.Minor(), 10),
		GitVersion: full,
	}, nil
}

// installOrder is the order in which Helm emits (and installs) kinds; others come after,
// sorted by kind.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
}

type manifest struct {
	source, kind, content string
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

func render(o options) (string, error) {
	meta := Chart{}
	data, err := os.ReadFile(filepath.Join(o.chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	if err := yaml.Unmarshal(data, &meta); err != nil {
		return "", fmt.Errorf("Chart.yaml: %w", err)
	}
	if meta.APIVersion != "v2" || meta.Name == "" || meta.Version == "" {
		return "", errors.New("Chart.yaml: apiVersion v2, name and version are required")
	}
	if len(meta.Dependencies) > 0 {
		return "", errors.New("Chart.yaml: dependencies (subcharts) are not supported")
	}
	kube, err := parseKubeVersion(o.kubeVersion)
	if err != nil {
		return "", err
	}
	if meta.KubeVersion != "" {
		c, err := semver.NewConstraint(meta.KubeVersion)
		if err != nil {
			return "", fmt.Errorf("Chart.yaml kubeVersion: %w", err)
		}
		if !c.Check(semver.MustParse(kube.Version)) {
			return "", fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", meta.KubeVersion, kube.Version)
		}
	}

	values := map[string]interface{}{}
	if _, err := os.Stat(filepath.Join(o.chartDir, "values.yaml")); err == nil {
		if values, err = readValues(filepath.Join(o.chartDir, "values.yaml")); err != nil {
			return "", err
		}
	}
	user := map[string]interface{}{}
	for _, f := range o.valueFiles {
		m, err := readValues(f)
		if err != nil {
			return "", err
		}
		user = mergeMaps(user, m)
	}
	for _, s := range o.sets {
		if err := applySet(user, s); err != nil {
			return "", err
		}
	}
	values = coalesce(user, values)

	// Every file under templates/, named <chart>/templates/<path> as Helm names them.
	var names []string
	sources := map[string]string{}
	tdir := filepath.Join(o.chartDir, "templates")
	err = filepath.WalkDir(tdir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(tdir, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		name := path.Join(meta.Name, "templates", filepath.ToSlash(rel))
		names = append(names, name)
		sources[name] = string(b)
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)

	root := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includeDepth := map[string]int{}
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		if includeDepth[name] > 1000 {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		includeDepth[name]++
		defer func() { includeDepth[name]-- }()
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	root.Funcs(funcs)
	for _, name := range names {
		if _, err := root.New(name).Parse(sources[name]); err != nil {
			return "", err
		}
	}

	release := map[string]interface{}{
		"Name": o.release, "Namespace": o.namespace, "Service": "Helm",
		"IsInstall": true, "IsUpgrade": false, "Revision": 1,
	}
	var manifests []manifest
	for _, name := range names {
		base := path.Base(name)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		top := map[string]interface{}{
			"Values":       values,
			"Release":      release,
			"Chart":        meta,
			"Capabilities": Capabilities{KubeVersion: kube},
			"Template":     map[string]interface{}{"Name": name, "BasePath": path.Join(meta.Name, "templates")},
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, top); err != nil {
			return "", err
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, doc := range docSeparator.Split(out, -1) {
			doc = strings.TrimSpace(doc)
			if doc == "" {
				continue
			}
			var head struct {
				Kind string `yaml:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return "", fmt.Errorf("YAML parse error on %s: %w", name, err)
			}
			manifests = append(manifests, manifest{name, head.Kind, doc})
		}
	}

	rank := func(kind string) int {
		for i, k := range installOrder {
			if k == kind {
				return i
			}
		}
		return len(installOrder)
	}
	sort.SliceStable(manifests, func(i, j int) bool {
		ri, rj := rank(manifests[i].kind), rank(manifests[j].kind)
		if ri == len(installOrder) && rj == len(installOrder) {
			return manifests[i].kind < manifests[j].kind
		}
		return ri < rj
	})
	var b strings.Builder
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.source, m.content)
	}
	return b.String(), nil
}
