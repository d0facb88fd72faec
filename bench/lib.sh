# Shared helpers of the benchmarks: a mailflow stack and a Postfix instance, both on
# loopback with their own ports and directories under $WORK, and an smtp-sink.
# Sourced by the bench scripts; expects ROOT and WORK to be set.

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    if [ -n "${PF:-}" ] && [ -d "$PF" ]; then postfix -c "$PF" stop >/dev/null 2>&1 || true; fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    local port=$1 deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "nothing listens on $port" >&2; exit 1; }
        sleep 0.1
    done
}

# median X...: the middle value of numbers (the lower of the two middle ones for an even
# count).
median() {
    printf "%s\n" "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

# rss_kb PID: resident memory of a process in KiB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# cpu_ticks PID...: user+system clock ticks used so far by the processes (those that have
# exited count nothing).
cpu_ticks() {
    local total=0 pid ticks
    for pid in "$@"; do
        ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || ticks=0
        total=$((total + ${ticks:-0}))
    done
    echo "$total"
}

# machine_ticks: "busy idle" clock ticks of the whole machine so far (/proc/stat: user,
# nice and system are busy; iowait counts as idle).
machine_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6; exit }' /proc/stat
}

# machine_cost N BEFORE AFTER: milliseconds of the whole machine's CPU per message between
# two machine_ticks readings, and the share of the time it was busy ("0.412 ms, 96% busy").
machine_cost() {
    local n=$1 b0 i0 b1 i1
    read -r b0 i0 <<<"$2"; read -r b1 i1 <<<"$3"
    python3 -c "print(f'{($b1 - $b0) / $HZ * 1000 / $n:.3f} ms, {100 * ($b1 - $b0) / max(1, $b1 - $b0 + $i1 - $i0):.0f}% busy')"
}

# wait_idle PID...: waits (at most 120 s) until the processes stop using CPU, so that one
# system's delivery backlog does not slow the next system's measurement.
wait_idle() {
    local before after deadline=$((SECONDS + 120))
    while [ $SECONDS -lt $deadline ]; do
        before=$(cpu_ticks "$@")
        sleep 0.5
        after=$(cpu_ticks "$@")
        [ $((after - before)) -ge 3 ] || return 0
    done
}

start_sink() {
    SINK_PORT=$(free_port)
    # smtp-sink refuses to run as root without a user to switch to.
    smtp-sink -u postfix 127.0.0.1:"$SINK_PORT" 2000 >/dev/null 2>&1 &
    pids+=($!); SINK_PID=$!
    wait_port "$SINK_PORT"
}

# start_dns: dnsmasq answering for the benchmark's domains (bench.test and below: every
# name is 127.0.0.1, and remote.bench.test has an MX), nothing else; sets DNS_PORT.
start_dns() {
    [ -z "${DNS_PORT:-}" ] || return 0
    DNS_PORT=$(free_port)
    dnsmasq --keep-in-foreground --port="$DNS_PORT" --listen-address=127.0.0.1 \
        --bind-interfaces --no-resolv --no-hosts --user=root --pid-file= \
        --address=/bench.test/127.0.0.1 \
        --mx-host=remote.bench.test,mx.remote.bench.test,10 >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$DNS_PORT"
}

# start_mailflow EXTRA_INGRESS_TOML: nats-server and the three release binaries (from
# MAILFLOW_BIN when set, to measure another build); sets SMTP_PORT and MAILFLOW_PIDS.
# Remote mail goes to the smtp-sink.
#
# Everything shares two cores with the load generator and the sink, so each process gets
# one scheduler thread: nats-server GOMAXPROCS=1, each service worker_threads = 1 (the
# setting for co-located deployments; measured: about 17% less CPU per message than one
# thread per CPU in every process, which only adds context switches here).
start_mailflow() {
    local nats_port policy_port queue_port
    start_dns
    nats_port=$(free_port); policy_port=$(free_port); queue_port=$(free_port); SMTP_PORT=$(free_port)
    # NATS_SYNC=always: an fsync before every acknowledgement (the default syncs every 2 min).
    cat > "$WORK/nats.conf" <<CONF
jetstream { store_dir: "$WORK/nats", sync_interval: ${NATS_SYNC:-"2m"} }
CONF
    GOMAXPROCS=1 "$ROOT/.tools/venv/bin/nats-server" -a 127.0.0.1 -p "$nats_port" -c "$WORK/nats.conf" >/dev/null 2>&1 &
    pids+=($!); NATS_PID=$!
    wait_port "$nats_port"
    cat > "$WORK/mailflow.toml" <<TOML
[nats]
url = "nats://127.0.0.1:$nats_port"
[log]
level = "warn"
[ingress]
worker_threads = 1
hostname = "mx.bench.test"
mx_listen = "127.0.0.1:$SMTP_PORT"
policy_url = "http://127.0.0.1:$policy_port"
$1
[policy]
worker_threads = 1
grpc_listen = "127.0.0.1:$policy_port"
relay_networks = ["127.0.0.0/8"]
dns_servers = ["127.0.0.1:$DNS_PORT"]
[relay]
worker_threads = 1
hostname = "relay.bench.test"
grpc_listen = "127.0.0.1:$queue_port"
maildir_root = "$WORK/mail"
smarthost = "127.0.0.1:$SINK_PORT"
TOML
    export MAILFLOW_CONFIG="$WORK/mailflow.toml"
    MAILFLOW_PIDS=("$NATS_PID")
    for svc in policy relay ingress; do
        "${MAILFLOW_BIN:-$ROOT/target/release}/mailflow-$svc" 2>>"$WORK/$svc.log" &
        pids+=($!); MAILFLOW_PIDS+=($!)
        [ "$svc" = ingress ] && INGRESS_PID=$!
    done
    wait_port "$policy_port"; wait_port "$queue_port"; wait_port "$SMTP_PORT"
}

# stop_mailflow: stops the services and nats-server of start_mailflow and removes the store.
stop_mailflow() {
    local pid
    for pid in "${MAILFLOW_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${MAILFLOW_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK/nats"
}

# make_certificate: a test CA ($WORK/ca.pem, what clients trust) and an ECDSA server
# certificate it signed for localhost and 127.0.0.1 ($WORK/tls.pem, $WORK/tls.key), for
# both systems' STARTTLS.
make_certificate() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=bench-ca -keyout "$WORK/ca.key" -out "$WORK/ca.pem" >/dev/null 2>&1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout "$WORK/tls.key" -out "$WORK/tls.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$WORK/tls.ext"
    openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
        -CAcreateserial -days 2 -extfile "$WORK/tls.ext" -out "$WORK/tls.pem" >/dev/null 2>&1
    chmod 644 "$WORK/tls.key"
}

# postfix_queue_files [FIND ACTION...]: the message files in the private instance's queue
# (printed, or what the find actions given do with them).
postfix_queue_files() {
    find "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/deferred" "$PF/queue/maildrop" \
        -type f "$@" 2>/dev/null
}

# postfix_queued: messages in the private Postfix instance's queue.
postfix_queued() {
    postfix_queue_files | wc -l
}

# restart_postfix: stops the private instance, empties its queue, and starts it again
# (fresh processes, so peak memory is per case).
restart_postfix() {
    postfix -c "$PF" stop >/dev/null 2>&1 || true
    postfix_queue_files -delete || true
    postfix -c "$PF" start >/dev/null 2>&1
    wait_port "$PF_PORT"
}

# start_postfix: a private Postfix instance relaying everything to the smtp-sink; sets
# PF_PORT. It writes one line to the default instance's main.cf
# (alternate_config_directories), which Postfix requires for a second instance.
start_postfix() {
    PF="$WORK/postfix"
    PF_PORT=$(free_port)
    # Postfix' daemons run as the postfix user and must reach their directories.
    chmod 755 "$WORK"
    mkdir -p "$PF/queue" "$PF/data"
    cp /etc/postfix/main.cf /etc/postfix/master.cf "$PF/"
    postconf -c "$PF" -e \
        "queue_directory=$PF/queue" "data_directory=$PF/data" "meta_directory=/etc/postfix" \
        "shlib_directory=/usr/lib/postfix" "inet_interfaces=127.0.0.1" "inet_protocols=ipv4" \
        "mynetworks=127.0.0.0/8" "relayhost=[127.0.0.1]:$SINK_PORT" "myhostname=postfix.bench.test" \
        "mydestination=" "default_process_limit=200" "maillog_file=$PF/maillog" \
        "maillog_file_prefixes=/var,/dev/stdout,$WORK" \
        "smtpd_relay_restrictions=permit_mynetworks,reject_unauth_destination" \
        "compatibility_level=3.6" "alternate_config_directories="
    local alt
    alt=$(postconf -h alternate_config_directories)
    case " $alt " in *" $PF "*) ;; *) postconf -e "alternate_config_directories=${alt:+$alt }$PF" ;; esac
    sed -i "s|^smtp      inet  n       -       y       -       -       smtpd|127.0.0.1:$PF_PORT inet n - n - - smtpd|" "$PF/master.cf"
    chown postfix "$PF/data"
    # check creates the queue directories.
    postfix -c "$PF" check >/dev/null 2>&1 || true
    postfix -c "$PF" start >/dev/null 2>&1
    wait_port "$PF_PORT"
}

# postfix_pids: the processes of the private instance.
postfix_pids() {
    local master
    master=$(head -1 "$PF/queue/pid/master.pid" | tr -d ' ')
    echo "$master $(pgrep -P "$master" | tr '\n' ' ')"
}

# timed COMMAND...: runs the command, writing the CPU it used ("user system", seconds) to
# $WORK/load.cpu.
timed() {
    /usr/bin/time -f "%U %S" -o "$WORK/load.cpu" "$@"
}

# shared_cost N SINK_TICKS: the load generator's CPU per message (the last `timed` command)
# and the sink's since SINK_TICKS (a cpu_ticks reading), the part of a run that both
# systems share ("load generator 0.210 ms, sink 0.480 ms").
shared_cost() {
    local user system
    read -r user system < <(tail -n 1 "$WORK/load.cpu")
    python3 -c "print(f'load generator {($user + $system) * 1000 / $1:.3f} ms, sink {($(cpu_ticks "$SINK_PID") - $2) / $HZ * 1000 / $1:.3f} ms')"
}

# source_rate PORT: runs smtp-source with the benchmark's load and prints messages/second.
source_rate() {
    local start end
    start=$(date +%s.%N)
    timed smtp-source -s "$SESSIONS" -l "$SIZE" -m "$MESSAGES" -f bench@client.bench.test \
        -t rcpt@remote.bench.test 127.0.0.1:"$1" >/dev/null
    end=$(date +%s.%N)
    python3 -c "print(f'{$MESSAGES / ($end - $start):.0f}')"
}
