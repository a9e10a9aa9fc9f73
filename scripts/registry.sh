#!/usr/bin/env bash
# Starts/stops a throwaway CNCF Distribution registry on 127.0.0.1 for tests.
#
#   scripts/registry.sh start [--name NAME] [--htpasswd USER:PASS] [--tls] [--mtls] [--proxy URL]
#   scripts/registry.sh stop  [--name NAME]
#   scripts/registry.sh env   [--name NAME]
#
# --proxy URL makes it a pull-through cache (a mirror) of the registry at URL.
# `start` prints `export VAR=value` lines (also saved in STATE/env), so a
# caller can do:  env_lines=$(scripts/registry.sh start) && eval "$env_lines"
# Everything else goes to stderr so that stdout stays eval-able.
#
# State lives in ${ORAS_FS_REGISTRY_STATE:-/tmp/oras-fs-registry}/NAME.
set -euo pipefail

STATE_BASE="${ORAS_FS_REGISTRY_STATE:-/tmp/oras-fs-registry}"

die() {
    echo "registry.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# True if PID is alive and is the registry serving CONFIG (guards against a
# recycled pid: we must never signal some unrelated process).
is_ours() {
    local pid=$1 config=$2 argv=()
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    # mapfile is a builtin: scanning all of /proc stays cheap (no forks).
    mapfile -d '' argv 2>/dev/null <"/proc/$pid/cmdline" || return 1
    ((${#argv[@]} == 3)) || return 1
    [[ ${argv[0]##*/} == docker-registry && ${argv[1]} == serve && ${argv[2]} == "$config" ]]
}

# True if PID exists and is not a zombie (a dead child we haven't reaped).
alive_pid() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# Pids of every registry process serving CONFIG (normally at most one).
our_pids() {
    local config=$1 d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        is_ours "$pid" "$config" && echo "$pid"
    done
    return 0
}

stop_instance() {
    local state=$1 config="$1/config.yml" pid pids=() i
    if [[ -f $state/pid ]]; then
        pid=$(<"$state/pid")
        is_ours "$pid" "$config" && pids+=("$pid")
    fi
    # Also catch strays whose pid file was lost.
    while read -r pid; do
        [[ -n $pid && " ${pids[*]} " != *" $pid "* ]] && pids+=("$pid")
    done < <(our_pids "$config")

    if ((${#pids[@]} > 0)); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            [[ -z $(our_pids "$config") ]] && break
            sleep 0.1
        done
        while read -r pid; do
            [[ -n $pid ]] || continue
            echo "registry.sh: pid $pid ignored TERM, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        done < <(our_pids "$config")
        for ((i = 0; i < 20; i++)); do
            [[ -z $(our_pids "$config") ]] && break
            sleep 0.1
        done
        [[ -z $(our_pids "$config") ]] || die "could not stop registry in $state"
    fi
    rm -f "$state/pid"
}

free_port() {
    # The kernel picks an unused port; the tiny race until the registry binds
    # it is acceptable for tests (and a fixed port would clash between runs).
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

make_tls() {
    local state=$1 log="$1/openssl.log"
    # Throwaway CA (P-256: fast to generate, accepted by rustls and Go).
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$state/ca.key" -out "$state/ca.crt" -days 30 \
        -subj "/CN=oras-fs test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" >"$log" 2>&1 ||
        { cat "$log" >&2; die "openssl: CA creation failed"; }
    # Server cert: strict verifiers (webpki) want a SAN, a non-CA leaf and
    # serverAuth EKU.
    cat >"$state/server.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
    sign_leaf "$state" server "/CN=127.0.0.1"
    chmod 600 "$state/ca.key"
}

# sign_leaf STATE NAME SUBJECT: a key and a certificate from the CA of STATE, with the
# extensions of STATE/NAME.ext, as STATE/NAME.key and STATE/NAME.crt.
sign_leaf() {
    local state=$1 name=$2 subject=$3 log="$1/openssl.log"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$state/$name.key" -out "$state/$name.csr" \
        -subj "$subject" >>"$log" 2>&1 ||
        { cat "$log" >&2; die "openssl: $name key/CSR failed"; }
    openssl x509 -req -in "$state/$name.csr" -CA "$state/ca.crt" -CAkey "$state/ca.key" \
        -CAcreateserial -out "$state/$name.crt" -days 30 -sha256 \
        -extfile "$state/$name.ext" >>"$log" 2>&1 ||
        { cat "$log" >&2; die "openssl: signing $name cert failed"; }
    chmod 600 "$state/$name.key"
}

# A client certificate from the same CA, for --mtls (the registry then requires one).
make_client_cert() {
    local state=$1
    cat >"$state/client.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EOF
    sign_leaf "$state" client "/CN=oras-fs test client"
}

# Prints the HTTP status of GET URL (000 when unreachable). CERT: a client
# certificate (its key beside it, .key for .crt), for --mtls.
http_status() {
    local url=$1 ca=$2 user=$3 pass=$4 cert=${5:-}
    if command -v curl >/dev/null 2>&1; then
        local args=(-s -o /dev/null -w '%{http_code}' --max-time 2)
        [[ -n $ca ]] && args+=(--cacert "$ca")
        [[ -n $cert ]] && args+=(--cert "$cert" --key "${cert%.crt}.key")
        [[ -n $user ]] && args+=(-u "$user:$pass")
        curl "${args[@]}" "$url" 2>/dev/null || true
    else
        # No curl on some machines; python3 is always there.
        URL=$url CA=$ca USER_=$user PASS_=$pass CERT=$cert python3 - <<'EOF' 2>/dev/null || echo 000
import base64, os, ssl, urllib.error, urllib.request
req = urllib.request.Request(os.environ["URL"])
if os.environ["USER_"]:
    tok = base64.b64encode(f'{os.environ["USER_"]}:{os.environ["PASS_"]}'.encode()).decode()
    req.add_header("Authorization", "Basic " + tok)
ctx = ssl.create_default_context(cafile=os.environ["CA"]) if os.environ["CA"] else None
if ctx and os.environ["CERT"]:
    ctx.load_cert_chain(os.environ["CERT"], os.environ["CERT"][:-4] + ".key")
try:
    with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
    fi
}

cmd_start() {
    local name=main htpasswd_arg="" tls=0 mtls=0 proxy=""
    while (($#)); do
        case $1 in
        --name) name=${2:?--name needs a value}; shift 2 ;;
        --name=*) name=${1#*=}; shift ;;
        --htpasswd) htpasswd_arg=${2:?--htpasswd needs USER:PASS}; shift 2 ;;
        --htpasswd=*) htpasswd_arg=${1#*=}; shift ;;
        --tls) tls=1; shift ;;
        --mtls) tls=1; mtls=1; shift ;;
        --proxy) proxy=${2:?--proxy needs a URL}; shift 2 ;;
        --proxy=*) proxy=${1#*=}; shift ;;
        *) usage ;;
        esac
    done
    [[ $name =~ ^[A-Za-z0-9._-]+$ && $name != . && $name != .. ]] || die "bad --name '$name'"
    local user="" pass=""
    if [[ -n $htpasswd_arg ]]; then
        [[ $htpasswd_arg == *:* ]] || die "--htpasswd wants USER:PASS"
        user=${htpasswd_arg%%:*}
        pass=${htpasswd_arg#*:}
        [[ -n $user ]] || die "--htpasswd: empty user"
    fi
    command -v docker-registry >/dev/null 2>&1 || die "docker-registry not installed (run scripts/setup.sh)"

    mkdir -p "$STATE_BASE"
    local state
    state="$(cd "$STATE_BASE" && pwd -P)/$name"
    local config="$state/config.yml"

    # Fresh state: stop a live instance from an earlier run first.
    if [[ -d $state ]]; then
        stop_instance "$state"
        rm -rf "$state"
    fi
    mkdir -p "$state/data"

    local port secret
    port=$(free_port) || die "python3 failed to find a free port"
    secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))') ||
        die "python3 failed to make a secret"

    local scheme=http ca="" client_cert=""
    if ((tls)); then
        command -v openssl >/dev/null 2>&1 || die "openssl not installed (run scripts/setup.sh)"
        make_tls "$state"
        scheme=https
        ca="$state/ca.crt"
    fi
    if ((mtls)); then
        make_client_cert "$state"
        client_cert="$state/client.crt"
    fi
    if [[ -n $user ]]; then
        command -v htpasswd >/dev/null 2>&1 || die "htpasswd not installed (run scripts/setup.sh)"
        # Distribution only accepts bcrypt entries.
        htpasswd -Bbn "$user" "$pass" >"$state/htpasswd"
    fi

    {
        echo "version: 0.1"
        echo "log:"
        echo "  level: info"
        echo "  formatter: json"
        echo "  accesslog:"
        echo "    disabled: false"
        echo "storage:"
        echo "  filesystem:"
        echo "    rootdirectory: \"$state/data\""
        echo "  delete:"
        echo "    enabled: true"
        echo "http:"
        echo "  addr: 127.0.0.1:$port"
        echo "  secret: $secret"
        if ((tls)); then
            echo "  tls:"
            echo "    certificate: \"$state/server.crt\""
            echo "    key: \"$state/server.key\""
            if ((mtls)); then
                echo "    clientcas:"
                echo "      - \"$ca\""
            fi
        fi
        if [[ -n $user ]]; then
            echo "auth:"
            echo "  htpasswd:"
            echo "    realm: oras-fs-test"
            echo "    path: \"$state/htpasswd\""
        fi
        if [[ -n $proxy ]]; then
            echo "proxy:"
            echo "  remoteurl: \"$proxy\""
        fi
        echo "health:"
        echo "  storagedriver:"
        echo "    enabled: false"
    } >"$config"

    # Distribution lets REGISTRY_* env vars override the config; drop any
    # inherited ones so the file above is the whole truth.
    local unset_args=() v
    while read -r v; do
        [[ $v == REGISTRY_* ]] && unset_args+=(-u "$v")
    done < <(compgen -e)

    # setsid: own session, so it outlives this script and the caller's
    # terminal/process group. It must not hold our stdout (callers capture it
    # with $(...)), hence all three fds redirected.
    # GOGC=400: Go's collector ran at every few requests and was ~30% of the
    # registry's CPU for small blobs; here the registry shares the machine's
    # cores with the clients under test (a remote one would not), so its cost
    # is kept low. Peak RSS stays under 200 MiB.
    setsid env "${unset_args[@]}" GOGC=400 docker-registry serve "$config" \
        </dev/null >"$state/registry.log" 2>&1 &
    local pid=$!
    # setsid forks only when it is a process-group leader (not the case in a
    # script), but be sure we record the registry's own pid.
    sleep 0.05
    if ! is_ours "$pid" "$config"; then
        local p
        p=$(our_pids "$config" | head -n1)
        [[ -n $p ]] && pid=$p
    fi
    echo "$pid" >"$state/pid"

    local url="$scheme://127.0.0.1:$port/v2/" code=000
    local deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        code=$(http_status "$url" "$ca" "" "" "$client_cert")
        if [[ $code == 200 || ($code == 401 && -n $user) ]]; then
            break
        fi
        # $pid is our own child here, so no recycled-pid risk.
        if ! alive_pid "$pid"; then
            code=dead
            break
        fi
        sleep 0.1
    done
    if [[ $code != 200 && ! ($code == 401 && -n $user) ]]; then
        echo "registry.sh: registry '$name' did not come up on $url (last status: $code); log tail:" >&2
        tail -n 30 "$state/registry.log" >&2 || true
        stop_instance "$state"
        if alive_pid "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        exit 1
    fi

    {
        printf 'export ORAS_FS_TEST_REGISTRY=%q\n' "127.0.0.1:$port"
        printf 'export ORAS_FS_TEST_REGISTRY_DIR=%q\n' "$state/data"
        printf 'export ORAS_FS_TEST_REGISTRY_LOG=%q\n' "$state/registry.log"
        printf 'export ORAS_FS_TEST_REGISTRY_PID=%q\n' "$pid"
        if [[ -n $ca ]]; then
            printf 'export ORAS_FS_TEST_REGISTRY_CA=%q\n' "$ca"
        fi
        if [[ -n $client_cert ]]; then
            printf 'export ORAS_FS_TEST_REGISTRY_CLIENT_CERT=%q\n' "$client_cert"
            printf 'export ORAS_FS_TEST_REGISTRY_CLIENT_KEY=%q\n' "$state/client.key"
        fi
        if [[ -n $user ]]; then
            printf 'export ORAS_FS_TEST_REGISTRY_USER=%q\n' "$user"
            printf 'export ORAS_FS_TEST_REGISTRY_PASS=%q\n' "$pass"
        fi
    } >"$state/env"
    cat "$state/env"
    echo "registry.sh: '$name' up at $url (pid $pid, state $state)" >&2
}

parse_name() {
    local name=main
    while (($#)); do
        case $1 in
        --name) name=${2:?--name needs a value}; shift 2 ;;
        --name=*) name=${1#*=}; shift ;;
        *) usage ;;
        esac
    done
    [[ $name =~ ^[A-Za-z0-9._-]+$ && $name != . && $name != .. ]] || die "bad --name '$name'"
    echo "$name"
}

cmd_stop() {
    local name
    name=$(parse_name "$@")
    [[ -d $STATE_BASE ]] || return 0
    local state
    state="$(cd "$STATE_BASE" && pwd -P)/$name"
    stop_instance "$state"
}

cmd_env() {
    local name
    name=$(parse_name "$@")
    local envf="$STATE_BASE/$name/env"
    [[ -f $envf ]] || die "no env file at $envf (registry '$name' not started?)"
    cat "$envf"
}

(($#)) || usage
sub=$1
shift
case $sub in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
env) cmd_env "$@" ;;
-h | --help | help) usage ;;
*) usage ;;
esac
