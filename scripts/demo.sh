#!/usr/bin/env bash
# Runs the p11wld demo on this machine.
#
# Sets up three HSMs as three separate processes: three SoftHSM2 token
# directories, each served by its own `p11-kit server`. Only hsm1 gets a
# token labelled WLD_DEMO with an RSA-2048 key pair; `p11wld replicate`
# copies it to the other two, and `p11wld verify` checks them. libp11wld.so
# reaches them through three instances of p11-kit-client.so and shows them as
# one WLD slot. The demo then lists the slots with pkcs11-tool and runs
# examples/demo.rs, which signs from several threads and prints how the
# sessions were spread over the three members.
#
# Everything lives in one mktemp directory, removed on exit together with the
# p11-kit servers that this script started.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

softhsm_module=/usr/lib/softhsm/libsofthsm2.so
client_module=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
token_label=WLD_DEMO
key_label=wld-demo-key
key_id=01
hsm_count=3

# Fixed PINs of the demo tokens. pkcs11-tool reads them from the environment
# ("--pin env:NAME"), and the demo client reads P11WLD_DEMO_PIN, so no PIN
# appears on a command line.
export P11WLD_DEMO_SO_PIN=12345678
export P11WLD_DEMO_PIN=123456

step() {
    printf '\n== %s\n' "$*"
}

# Runs a command with its output in a log file, and prints that log if the
# command fails.
run_logged() {
    local log=$1
    shift
    if ! "$@" >>"$log" 2>&1; then
        echo "demo.sh: failed: $*" >&2
        echo "demo.sh: output of the failed command ($log):" >&2
        cat "$log" >&2
        exit 1
    fi
}

bash scripts/setup-debian.sh
for file in "$softhsm_module" "$client_module"; do
    if [[ ! -e $file ]]; then
        echo "demo.sh: $file not found; this script expects Debian 12's softhsm2 and p11-kit-modules packages on x86_64" >&2
        exit 1
    fi
done

step "building p11wld (cargo build --release)"
cargo build --release
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
module=$target_dir/release/libp11wld.so
cli=$target_dir/release/p11wld

work=$(mktemp -d "${TMPDIR:-/tmp}/p11wld-demo.XXXXXX")
server_pids=()

cleanup() {
    local pid
    for pid in "${server_pids[@]}"; do
        # Each server leads a process group with its connection processes.
        kill -- "-$pid" 2>/dev/null || true
    done
    for pid in "${server_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "generating one RSA-2048 key pair with openssl in $work"
run_logged "$work/openssl.log" openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
    -outform DER -out "$work/key.der"
run_logged "$work/openssl.log" openssl pkey -inform DER -in "$work/key.der" \
    -pubout -outform DER -out "$work/pub.der"

for n in $(seq 1 "$hsm_count"); do
    dir=$work/hsm$n
    mkdir -p "$dir/tokens"
    cat >"$dir/softhsm2.conf" <<EOF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
done

dir=$work/hsm1
step "hsm1 (the master): token $token_label in $dir/tokens, importing the key pair as $key_label"
log=$dir/setup.log
pkcs11_tool=(env "SOFTHSM2_CONF=$dir/softhsm2.conf" pkcs11-tool --module "$softhsm_module")
run_logged "$log" "${pkcs11_tool[@]}" --slot-index 0 --init-token --label "$token_label" \
    --so-pin env:P11WLD_DEMO_SO_PIN
run_logged "$log" "${pkcs11_tool[@]}" --token-label "$token_label" --login --login-type so \
    --so-pin env:P11WLD_DEMO_SO_PIN --init-pin --pin env:P11WLD_DEMO_PIN
# Sensitive, and extractable so that replication can carry it wrapped.
run_logged "$log" "${pkcs11_tool[@]}" --token-label "$token_label" --login --pin env:P11WLD_DEMO_PIN \
    --write-object "$work/key.der" --type privkey --id "$key_id" --label "$key_label" \
    --private --sensitive --extractable
run_logged "$log" "${pkcs11_tool[@]}" --token-label "$token_label" --login --pin env:P11WLD_DEMO_PIN \
    --write-object "$work/pub.der" --type pubkey --id "$key_id" --label "$key_label"

# Replication runs before the p11-kit servers start, with each token
# directory loaded directly from a copy of libsofthsm2.so of its own (the
# dynamic loader maps each path once, so each copy keeps its own SoftHSM2
# state): p11-kit-client.so 0.24 carries no AES key wrap mechanism, so a
# sensitive private key cannot travel through it.
setup_config=$work/p11wld-replicate.toml
mkdir -p "$work/lib"
for n in $(seq 1 "$hsm_count"); do
    cp "$softhsm_module" "$work/lib/libsofthsm2-hsm$n.so"
    cat >>"$setup_config" <<EOF
[[module]]
name = "hsm$n"
path = "$work/lib/libsofthsm2-hsm$n.so"
env = { SOFTHSM2_CONF = "$work/hsm$n/softhsm2.conf" }

EOF
done
step "physical slots with the HSMs attached directly (p11wld list)"
P11WLD_CONFIG=$setup_config "$cli" list --module "$module"
master_serial=$(P11WLD_CONFIG=$setup_config "$cli" --json list --module "$module" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["serial"])')
# Positions 0 (hsm1's token), 1 (hsm1's free slot), 2 and 3 (the free slots
# of hsm2 and hsm3). The expected serials and modules make the run refuse
# if the positions no longer name these tokens.
step "replicating hsm1 (serial $master_serial) to hsm2 and hsm3 (p11wld replicate)"
P11WLD_CONFIG=$setup_config P11WLD_SO_PIN=$P11WLD_DEMO_SO_PIN P11WLD_USER_PIN=$P11WLD_DEMO_PIN \
    "$cli" replicate --module "$module" -s 0 -d 2,3 --expect-serial "0=$master_serial,2=@hsm2,3=@hsm3"

# Starts the p11-kit server of HSM $1 in a process group of its own, so the
# server and its per-connection processes can be killed together, and records
# its pid in server_pids[$1].
start_server() {
    local n=$1 dir=$work/hsm$1 socket=$work/hsm$1.sock pid
    # A Unix socket path has at most 107 bytes on Linux (sun_path is 108).
    if ((${#socket} > 107)); then
        echo "demo.sh: socket path $socket is longer than 107 bytes; set TMPDIR to a shorter directory" >&2
        exit 1
    fi
    rm -f "$socket"
    SOFTHSM2_CONF=$dir/softhsm2.conf setsid p11-kit server -f --provider "$softhsm_module" \
        -n "$socket" "pkcs11:token=$token_label" >>"$dir/server.log" 2>&1 &
    pid=$!
    server_pids[n]=$pid

    # The server creates the socket once it is ready to accept clients.
    for _ in $(seq 1 100); do
        if [[ -S $socket ]] || ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if [[ ! -S $socket ]]; then
        echo "demo.sh: p11-kit server for hsm$n (pid $pid) did not create $socket within 10 s; its output:" >&2
        cat "$dir/server.log" >&2
        exit 1
    fi
    echo "p11-kit server pid $pid"
}

for n in $(seq 1 "$hsm_count"); do
    step "hsm$n: starting p11-kit server on $work/hsm$n.sock"
    start_server "$n"
done

config=$work/p11wld.toml
{
    echo "# p11wld configuration written by scripts/demo.sh: three p11-kit-client.so"
    echo "# instances, one per p11-kit server, each a separate HSM."
    for n in $(seq 1 "$hsm_count"); do
        cat <<EOF

[[module]]
name = "hsm$n"
path = "$client_module"
env = { P11_KIT_SERVER_ADDRESS = "unix:path=$work/hsm$n.sock" }
EOF
    done
    cat <<EOF

[wld]
labels = ["$token_label"]
policy = "least-sessions"

[health]
# Probe members that are down every second, so the demo shows hsm2 come
# back soon after its restart (the default is 5 s).
probe_interval_ms = 1000

[log]
level = "info"
EOF
} >"$config"
export P11WLD_CONFIG=$config

step "configuration $config"
cat "$config"

step "physical slots behind the module (p11wld list)"
"$cli" list --module "$module"

step "the three members are equal (p11wld verify)"
P11WLD_USER_PIN=$P11WLD_DEMO_PIN "$cli" verify --module "$module"

step "slots that applications see (pkcs11-tool --list-slots): one WLD slot"
pkcs11-tool --module "$module" --list-slots

step "demo client: sessions from several threads (cargo run --release --example demo)"
cargo run --release --example demo

step "failover: signing from 6 threads while hsm2 is killed and restarted"
ready=$work/workload.ready
P11WLD_DEMO_SECONDS=14 P11WLD_DEMO_READY_FILE=$ready \
    cargo run --quiet --release --example workload &
workload_pid=$!
for _ in $(seq 1 600); do
    [[ -e $ready ]] && break
    kill -0 "$workload_pid" 2>/dev/null || break
    sleep 0.1
done
sleep 3
echo ">> kill -9 hsm2 (p11-kit server pid ${server_pids[2]} and its connection processes)"
kill -KILL -- "-${server_pids[2]}"
wait "${server_pids[2]}" 2>/dev/null || true
sleep 4
echo ">> restarting hsm2"
start_server 2
if ! wait "$workload_pid"; then
    echo "demo.sh: the workload reported failed calls" >&2
    exit 1
fi

step "demo finished; stopping the p11-kit servers and removing $work"
