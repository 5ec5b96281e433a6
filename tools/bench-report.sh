#!/bin/bash
# Renders a results directory of tools/bench.sh (what `make bench-report`
# runs) into docs/benchmarks-serving.md and SVG charts in docs/.
#
#   tools/bench-report.sh [RESULTS_DIR]   (default: newest bench/results/*/)
#   BENCH_REPORT_DOC=<file.md>  (default docs/benchmarks-serving.md; the
#   charts go next to it, the hand-written part below the marker is kept)
#
# Tables: the matrix (offline engine and through nginx; with repeats, the
# repeat with the median output tok/s of each mode/model/concurrency), the
# overhead of nginx against the offline engine (per interleaved pair r the
# ratio nginx/offline of output tok/s and the TTFT p50 difference; the table
# gives the median over the pairs and the min-max range; bars: >= 97 %,
# <= 1 ms), and the 2,000-connection scale check with the worker's memory.
# Charts (gnuplot, median runs): output throughput vs concurrency, TTFT and
# TPOT percentiles vs concurrency.  Result files are
# <mode>-<model>-c<conc>.r<repeat>.json; older directories with one run
# each (<mode>-<model>-c<conc>.json) render as one repeat.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RES=${1:-$(ls -1d bench/results/*/ 2>/dev/null | sort | tail -1)}
RES=${RES%/}
[ -n "$RES" ] && [ -f "$RES/meta.json" ] || {
    echo "bench-report: no results (run make bench first, or pass a results dir)" >&2
    exit 1
}
DOC=${BENCH_REPORT_DOC:-docs/benchmarks-serving.md}
CHARTS=$(dirname "$DOC")
mkdir -p "$CHARTS"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Hand-written analysis below this marker survives regeneration.
MARKER='<!-- Everything below this line is hand-written; make bench-report keeps it. -->'
if [ -f "$DOC" ] && grep -qF -- "$MARKER" "$DOC"; then
    awk -v m="$MARKER" '$0 == m { keep = 1 } keep' "$DOC" > "$TMP/kept.md"
fi

meta() { jq -r ".$1 // \"?\"" "$RES/meta.json"; }
num() { printf "%.${2:-1}f" "$1"; }

# One TSV row per matrix run (all repeats):
# mode model c n failed out_tps tot_tps req_s ttft50 ttft90 ttft99 tpot50 tpot90 tpot99 itl50 e2e50 load repeat
# cpu_s (offline: the engine's; nginx: the worker's; -1: not recorded) client_cpu_s out_tokens duration_s
for f in "$RES"/offline-*-c*.json "$RES"/nginx-*-c*.json; do
    [ -f "$f" ] || continue
    b=$(basename "$f" .json)          # offline-tiny-c1.r2, or offline-tiny-c1 (one run)
    run=${b%.r*}
    r=1
    [ "$run" = "$b" ] || r=${b##*.r}
    mode=${run%%-*}
    rest=${run#*-}
    model=${rest%-c*}
    c=${rest##*-c}
    load=$(awk -F'\t' -v r="$b" '$1 == r {split($2, a, " "); print a[1]}' "$RES/runs.tsv" 2>/dev/null)
    jq -r --arg mode "$mode" --arg model "$model" --arg c "$c" --arg load "${load:-?}" --arg r "$r" \
       '[$mode, $model, ($c | tonumber), .num_prompts, (.failed // (.num_prompts - .completed)),
         .output_throughput, .total_token_throughput, .request_throughput,
         .median_ttft_ms, .p90_ttft_ms, .p99_ttft_ms,
         .median_tpot_ms, .p90_tpot_ms, .p99_tpot_ms, .median_itl_ms, .median_e2e_ms, $load,
         ($r | tonumber), (.cpu_s // .server_cpu_s // -1), (.client_cpu_s // 0),
         .total_output_tokens, .duration_s]
        | @tsv' "$f"
done | sort -t$'\t' -k2,2 -k1,1r -k3,3n -k18,18n > "$TMP/all.tsv"

[ -s "$TMP/all.tsv" ] || { echo "bench-report: no run results in $RES" >&2; exit 1; }

# The median run of each mode/model/concurrency by output tok/s (the lower
# middle one for an even count): the tables and charts show whole runs, so
# their percentiles stay those of one real run.
sort -t$'\t' -k2,2 -k1,1r -k3,3n -k6,6g "$TMP/all.tsv" | awk -F'\t' '
    function flush() { if (n) print row[int((n + 1) / 2)]; n = 0 }
    { k = $1 FS $2 FS $3; if (k != last) flush(); last = k; row[++n] = $0 }
    END { flush() }' | sort -t$'\t' -k2,2 -k1,1r -k3,3n > "$TMP/runs.tsv"
REPEATS=$(awk -F'\t' '{ n[$1 FS $2 FS $3]++ }
    END { for (k in n) { if (!lo || n[k] < lo) lo = n[k]; if (n[k] > hi) hi = n[k] }
          print (lo == hi) ? lo : lo "-" hi }' "$TMP/all.tsv")
MODELS=$(cut -f2 "$TMP/runs.tsv" | sort -u -r)

model_desc() {
    case $1 in
    tiny) echo "tiny-qwen3 (t/fixtures, 2 layers, hidden 32, real tokenizer)" ;;
    q06)  echo "Qwen3-0.6B shape, random weights (load_format=dummy)" ;;
    *)    echo "$1" ;;
    esac
}
lens() {   # model -> "input/output"
    local f
    f=$(ls "$RES"/offline-"$1"-c*.json 2>/dev/null | head -1)
    [ -n "$f" ] && jq -r '"\(.input_len) in / \(.output_len) out"' "$f"
}

# med(a, n): the median of a[1..n] (the mean of the two middle ones for an
# even n), sorting a in place; prepended to the awk programs that pair runs
AWK_MEDIAN='
    function med(a, n,    i, j, t) {
        for (i = 2; i <= n; i++)
            for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }'

# ---- charts ------------------------------------------------------------------
# per series data: c out_tps ttft50 ttft90 ttft99 tpot50 tpot90 tpot99
SERIES=()
for m in $MODELS; do
    for mode in offline nginx; do
        awk -F'\t' -v m="$m" -v mode="$mode" \
            '$1 == mode && $2 == m {print $3, $6, $9, $10, $11, $12, $13, $14}' \
            "$TMP/runs.tsv" | sort -n > "$TMP/$mode-$m.dat"
        [ -s "$TMP/$mode-$m.dat" ] && SERIES+=("$mode-$m")
    done
done

# one colour per series (offline/nginx x model); p50 solid, p99 dashed
plot_list() {   # column
    local s i=0 out=""
    for s in "${SERIES[@]}"; do
        i=$((i + 1))
        [ $i = 1 ] || out+=", "
        out+="'$TMP/$s.dat' using 1:$1 with linespoints linecolor $i pointtype $((i + 4)) title '$s'"
    done
    echo "$out"
}
pct_list() {    # p50col p99col
    local s i=0 out=""
    for s in "${SERIES[@]}"; do
        i=$((i + 1))
        [ $i = 1 ] || out+=", "
        out+="'$TMP/$s.dat' using 1:$1 with linespoints linecolor $i pointtype $((i + 4)) title '$s p50', "
        out+="'$TMP/$s.dat' using 1:$2 with linespoints linecolor $i dashtype 2 pointtype $((i + 4)) title '$s p99'"
    done
    echo "$out"
}

# BENCH_REPORT_FORMAT=png renders PNG charts instead (pngcairo)
FMT=${BENCH_REPORT_FORMAT:-svg}
case $FMT in
svg) TERMINAL="svg size 760,520 dynamic font 'sans,11' background '#ffffff'" ;;
png) TERMINAL="pngcairo size 760,520 font 'sans,10' background '#ffffff'" ;;
*)   echo "bench-report: BENCH_REPORT_FORMAT is svg or png" >&2; exit 2 ;;
esac

gnuplot <<EOF
set terminal $TERMINAL
set logscale x 2
set logscale y 10
set grid
set key below
set xlabel 'concurrency'

set output '$CHARTS/bench-throughput.$FMT'
set title 'Output tokens/s vs concurrency (CPU, $(meta cpus) cores)'
set ylabel 'output tokens/s'
plot $(plot_list 2)

set output '$CHARTS/bench-ttft.$FMT'
set title 'Time to first token, p50 and p99'
set ylabel 'TTFT (ms)'
plot $(pct_list 3 5)

set output '$CHARTS/bench-tpot.$FMT'
set title 'Time per output token, p50 and p99'
set ylabel 'TPOT (ms)'
plot $(pct_list 6 8)
EOF

# ---- the markdown ------------------------------------------------------------
{
echo "## Serving benchmarks (CPU backend)"
echo
echo "Generated by \`make bench-report\` from \`${RES}\` (\`make bench\`)."
echo
echo "| | |"
echo "| --- | --- |"
echo "| machine | $(meta cpu_model), $(meta cpus) CPUs, $(meta memory), Linux $(meta kernel) |"
echo "| commit | \`$(meta commit)\` |"
echo "| date | $(meta date) |"
echo "| load average (1/5/15 min) | start $(meta load_at_start), end $(meta load_at_end) |"
echo "| server | $(meta nginx), 1 worker, \`threads=$(meta threads) kv_cache=$(meta kv_cache)\` |"
echo "| matrix wall time | $(meta wall_s) s |"
echo "| repeats (interleaved offline/nginx pairs per row) | $REPEATS |"
echo
echo "Offline: \`llm-bench\` drives the engine in-process (random token-id prompts)."
echo "Through nginx: \`llm-serve-bench\` streams \`/v1/completions\` over HTTP/1.1 with"
echo "prompts of the same exact token count (random text, re-encoded until exact),"
WARM=$(meta warmup)
echo "\`ignore_eos\`, greedy sampling.  Both count time from submission; $(
    case $WARM in
    c) echo "each run starts with as many unmeasured requests as its concurrency, on both sides" ;;
    '?') echo "neither has a warm-up" ;;
    *) echo "each run starts with $WARM unmeasured requests, on both sides" ;;
    esac)."
echo "TTFT through nginx also holds the loopback HTTP round trip, request"
echo "parsing and the prompt's tokenization (offline submits token ids).  Each row's"
echo "load is the 1-minute load average before the run: on a loaded machine the"
echo "numbers are noise-bound; compare rows taken together.  With repeats, each"
echo "row is the repeat with the median output tok/s of that mode, model and"
echo "concurrency (the lower middle one for an even count)."
echo
echo "Reproduce: \`make bench && make bench-report\`; every command with its full"
echo "output is in \`${RES}/bench.log\`, per-run wall times and loads in \`runs.tsv\`."
for m in $MODELS; do
    echo
    echo "### $(model_desc "$m"), $(lens "$m")"
    echo
    echo "| mode | conc | reqs | fail | out tok/s | total tok/s | req/s | TTFT p50 / p90 / p99 ms | TPOT p50 / p90 / p99 ms | ITL p50 ms | E2E p50 ms | load |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' -v m="$m" '$2 == m {
        printf "| %s | %d | %d | %d | %.1f | %.1f | %.2f | %.1f / %.1f / %.1f | %.2f / %.2f / %.2f | %.2f | %.0f | %s |\n",
               $1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 }' "$TMP/runs.tsv"
done

echo
# the client's exact lengths, checked against the server's own usage counts
jq -rs '
  (map(select(.server_prompt_tokens == .total_input_tokens)) | length) as $p
  | (map(select(.output_len_mismatch == 0)) | length) as $o
  | "Lengths held: in \($p) of \(length) runs through nginx the prompt tokens the server counted equal the client'"'"'s exact prompt lengths; in \($o) of \(length) every request got exactly its output length."' \
  "$RES"/nginx-*-c*.json

echo
echo "### Overhead of nginx against the offline engine"
echo
echo "Bars: through nginx, output throughput >= 97 % of the offline engine's at"
echo "concurrency 1 and 64; TTFT at p50 at most 1 ms above the offline engine's."
echo
echo "How it is computed: \`make bench\` runs each row as interleaved pairs (offline"
echo "run r, then the same load through nginx, r = 1..N, one server up across the"
echo "pairs), so both sides of a pair see the same background load.  Per pair:"
echo "ratio = nginx output tok/s / offline output tok/s, difference = nginx TTFT"
echo "p50 - offline TTFT p50.  *ratio* and *difference* are the medians over the N"
echo "pairs (the mean of the two middle ones for an even N), the bars are judged"
echo "on them, and *range* is the smallest and largest pair; the tok/s and TTFT"
echo "columns are each side's own median over the N runs.  A single pair swings"
echo "by about +-12 % on a shared 2-vCPU machine."
if [ "$(meta repeat)" = "?" ]; then
    echo
    echo "These results predate repeats (no \`repeat\` in meta.json): one run per"
    echo "row, all offline runs of a model before its nginx runs, not interleaved."
fi
echo
echo "| model | conc | pairs | offline tok/s | nginx tok/s | ratio | ratio range | >= 97 % | offline TTFT p50 ms | nginx TTFT p50 ms | difference ms | difference range ms | <= 1 ms |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | :---: |"
for m in $MODELS; do
    for c in $(awk -F'\t' -v m="$m" '$2 == m {print $3}' "$TMP/all.tsv" | sort -nu); do
        # pairs: offline run r against nginx run r
        awk -F'\t' -v m="$m" -v c="$c" "$AWK_MEDIAN"'
            $2 == m && $3 == c && $1 == "offline" { ot[$18] = $6; of[$18] = $9 }
            $2 == m && $3 == c && $1 == "nginx"   { nt[$18] = $6; nf[$18] = $9 }
            END {
                n = 0
                for (r in ot) {
                    if (!(r in nt)) continue
                    n++
                    R[n] = ot[r] > 0 ? 100 * nt[r] / ot[r] : 0
                    D[n] = nf[r] - of[r]
                    Ot[n] = ot[r]; Nt[n] = nt[r]; Of[n] = of[r]; Nf[n] = nf[r]
                }
                if (!n) exit
                r = med(R, n); d = med(D, n)
                rr = n > 1 ? sprintf("%.1f to %.1f %%", R[1], R[n]) : "-"
                dr = n > 1 ? sprintf("%+.2f to %+.2f", D[1], D[n]) : "-"
                bar = (c == 1 || c == 64)
                printf "| %s | %d | %d | %.1f | %.1f | %.1f %% | %s | %s | %.2f | %.2f | %+.2f | %s | %s |\n",
                       m, c, n, med(Ot, n), med(Nt, n), r, rr,
                       bar ? (r >= 97 ? "yes" : "**no**") : "-",
                       med(Of, n), med(Nf, n), d, dr, d <= 1 ? "yes" : "**no**"
            }' "$TMP/all.tsv"
    done
done

# CPU per output token, where the runs recorded it (llm-bench's cpu_s,
# llm-serve-bench's server_cpu_s and client_cpu_s over the measured requests)
if awk -F'\t' '$19 < 0 { bad = 1 } END { exit bad }' "$TMP/all.tsv"; then
echo
echo "### Where the CPU goes"
echo
echo "Per output token, over the measured requests: the offline engine's CPU"
echo "(all its threads, spinning at the pool's joins included), the nginx"
echo "worker's (the same engine plus the event loop: HTTP parsing, prompt"
echo "tokenization, SSE chunks, socket writes) and the benchmark client's.  *HTTP"
echo "path* = worker - engine + client: the CPU the same load costs beyond the"
echo "engine when it arrives over HTTP.  *CPUs busy* = the offline engine's CPU"
echo "time / its wall time.  When the engine keeps every CPU busy, the HTTP path's"
echo "CPU comes out of the engine's and the throughput ratio cannot exceed"
echo "*ceiling* = engine / (engine + HTTP path); with the client on another"
echo "machine its share drops out.  Medians over the pairs.  Caveat: the pool's"
echo "threads spin at its joins, so an engine with every CPU busy uses CPU time ="
echo "wall time x threads whatever it achieves: when the same engine runs slower"
echo "in the worker (memory-bound rows, on a VM whose bandwidth moves within a"
echo "run), that shows here as HTTP path CPU it is not; the event loop's own"
echo "share is the HTTP path of the compute-bound rows (large batches)."
echo
echo "| model | conc | engine µs/tok (offline) | CPUs busy (offline) | worker µs/tok | client µs/tok | HTTP path µs/tok | ceiling | ratio measured |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for m in $MODELS; do
    for c in $(awk -F'\t' -v m="$m" '$2 == m {print $3}' "$TMP/all.tsv" | sort -nu); do
        awk -F'\t' -v m="$m" -v c="$c" "$AWK_MEDIAN"'
            $2 == m && $3 == c && $1 == "offline" && $21 > 0 {
                oe[$18] = 1e6 * $19 / $21; ob[$18] = $22 > 0 ? $19 / $22 : 0; ot[$18] = $6 }
            $2 == m && $3 == c && $1 == "nginx" && $21 > 0 {
                nw[$18] = 1e6 * $19 / $21; nc[$18] = 1e6 * $20 / $21; nt[$18] = $6 }
            END {
                n = 0
                for (r in oe) {
                    if (!(r in nw)) continue
                    n++
                    E[n] = oe[r]; B[n] = ob[r]; W[n] = nw[r]; C[n] = nc[r]
                    H[n] = nw[r] - oe[r] + nc[r]
                    X[n] = H[n] > -oe[r] ? 100 * oe[r] / (oe[r] + H[n]) : 0
                    R[n] = ot[r] > 0 ? 100 * nt[r] / ot[r] : 0
                }
                if (!n) exit
                printf "| %s | %d | %.0f | %.2f | %.0f | %.0f | %.0f | %.1f %% | %.1f %% |\n",
                       m, c, med(E, n), med(B, n), med(W, n), med(C, n), med(H, n),
                       med(X, n), med(R, n)
            }' "$TMP/all.tsv"
    done
done
fi

shopt -s nullglob
for f in "$RES"/scale-*.json; do
    echo
    echo "### Scale: $(jq -r '.num_prompts' "$f") concurrent streaming connections ($(jq -r '.model' "$f") model)"
    echo
    echo "\`llm-serve-bench --endpoint chat --max-concurrency $(jq -r '.max_concurrency' "$f")\`:"
    echo "every request opens its own connection at once; the engine runs up to"
    echo "\`max_num_seqs\` (256) of them, the rest wait queued with their streams open."
    echo
    jq -r '
      "| | |\n| --- | --- |",
      "| requests / completed / failed | \(.num_prompts) / \(.completed) / \(.failed) |",
      "| connections open at once (max) | \(.peak_in_flight) |",
      "| input / output tokens | \(.input_len) / \(.output_len) (chat content; the template adds its tokens) |",
      "| duration | \(.duration_s * 10 | round / 10) s |",
      "| output tok/s | \(.output_throughput * 10 | round / 10) |",
      "| TTFT p50 / p99 (queue wait included) | \(.median_ttft_ms | round) / \(.p99_ttft_ms | round) ms |",
      (if .rss then
        "| worker RSS idle (after warm-up) / peak / after | \(.rss.before_kb / 1024 | round) / \(.rss.peak_kb / 1024 | round) / \(.rss.after_kb / 1024 | round) MiB |",
        "| worker memory per connection | \(.rss.per_connection_kb * 10 | round / 10) kB ((peak - idle) / \(.peak_in_flight)) |"
       else empty end),
      (if (.failures | length) > 0 then
        "| failures | \([.failures[] | "\(.count) x \(.example)"] | join("; ")) |"
       else "| failures | none |" end)' "$f"
done

echo
echo "![output throughput](bench-throughput.$FMT)"
echo "![TTFT](bench-ttft.$FMT)"
echo "![TPOT](bench-tpot.$FMT)"
if [ -s "$TMP/kept.md" ]; then
    echo
    cat "$TMP/kept.md"
fi
} > "$DOC"

echo "bench-report: wrote $DOC and $CHARTS/bench-{throughput,ttft,tpot}.$FMT from $RES" >&2
