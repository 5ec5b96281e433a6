#!/bin/bash
# Renders a results directory of tools/bench.sh (what `make bench-report`
# runs) into docs/benchmarks-serving.md and SVG charts in docs/.
#
#   tools/bench-report.sh [RESULTS_DIR]   (default: newest bench/results/*/)
#
# Tables: every run of the matrix (offline engine and through nginx), the
# overhead of nginx against the offline engine (throughput ratio and TTFT
# difference at p50; bars: >= 97 %, <= 1 ms), and the 2,000-connection
# scale check with the worker's memory.  Charts (gnuplot): output
# throughput vs concurrency, TTFT and TPOT percentiles vs concurrency.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RES=${1:-$(ls -1d bench/results/*/ 2>/dev/null | sort | tail -1)}
RES=${RES%/}
[ -n "$RES" ] && [ -f "$RES/meta.json" ] || {
    echo "bench-report: no results (run make bench first, or pass a results dir)" >&2
    exit 1
}
DOC=docs/benchmarks-serving.md
mkdir -p docs
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Hand-written analysis below this marker survives regeneration.
MARKER='<!-- Everything below this line is hand-written; make bench-report keeps it. -->'
if [ -f "$DOC" ] && grep -qF -- "$MARKER" "$DOC"; then
    awk -v m="$MARKER" '$0 == m { keep = 1 } keep' "$DOC" > "$TMP/kept.md"
fi

meta() { jq -r ".$1 // \"?\"" "$RES/meta.json"; }
num() { printf "%.${2:-1}f" "$1"; }

# One TSV row per matrix run:
# mode model c n failed out_tps tot_tps req_s ttft50 ttft90 ttft99 tpot50 tpot90 tpot99 itl50 e2e50 load
for f in "$RES"/offline-*-c*.json "$RES"/nginx-*-c*.json; do
    [ -f "$f" ] || continue
    b=$(basename "$f" .json)
    mode=${b%%-*}
    rest=${b#*-}
    model=${rest%-c*}
    c=${rest##*-c}
    load=$(awk -F'\t' -v r="$b" '$1 == r {split($2, a, " "); print a[1]}' "$RES/runs.tsv" 2>/dev/null)
    jq -r --arg mode "$mode" --arg model "$model" --arg c "$c" --arg load "${load:-?}" \
       '[$mode, $model, ($c | tonumber), .num_prompts, (.failed // (.num_prompts - .completed)),
         .output_throughput, .total_token_throughput, .request_throughput,
         .median_ttft_ms, .p90_ttft_ms, .p99_ttft_ms,
         .median_tpot_ms, .p90_tpot_ms, .p99_tpot_ms, .median_itl_ms, .median_e2e_ms, $load]
        | @tsv' "$f"
done | sort -t$'\t' -k2,2 -k1,1r -k3,3n > "$TMP/runs.tsv"

[ -s "$TMP/runs.tsv" ] || { echo "bench-report: no run results in $RES" >&2; exit 1; }
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

set output 'docs/bench-throughput.$FMT'
set title 'Output tokens/s vs concurrency (CPU, $(meta cpus) cores)'
set ylabel 'output tokens/s'
plot $(plot_list 2)

set output 'docs/bench-ttft.$FMT'
set title 'Time to first token, p50 and p99'
set ylabel 'TTFT (ms)'
plot $(pct_list 3 5)

set output 'docs/bench-tpot.$FMT'
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
echo
echo "Offline: \`llm-bench\` drives the engine in-process (random token-id prompts)."
echo "Through nginx: \`llm-serve-bench\` streams \`/v1/completions\` over HTTP/1.1 with"
echo "prompts of the same exact token count (random text, re-encoded until exact),"
echo "\`ignore_eos\`, greedy sampling.  Both count time from submission; neither has a"
echo "warm-up.  TTFT through nginx also holds the loopback HTTP round trip, request"
echo "parsing and the prompt's tokenization (offline submits token ids).  Each row's"
echo "load is the 1-minute load average before the run: on a loaded machine the"
echo "numbers are noise-bound; compare rows taken together."
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
echo "| model | conc | offline tok/s | nginx tok/s | ratio | >= 97 % | offline TTFT p50 ms | nginx TTFT p50 ms | difference ms | <= 1 ms |"
echo "| --- | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | :---: |"
for m in $MODELS; do
    for c in $(awk -F'\t' -v m="$m" '$2 == m {print $3}' "$TMP/runs.tsv" | sort -nu); do
        awk -F'\t' -v m="$m" -v c="$c" '
            $2 == m && $3 == c && $1 == "offline" { ot = $6; of = $9; ho = 1 }
            $2 == m && $3 == c && $1 == "nginx"   { nt = $6; nf = $9; hn = 1 }
            END {
                if (!ho || !hn) exit
                r = ot > 0 ? 100 * nt / ot : 0
                d = nf - of
                bar = (c == 1 || c == 64)
                printf "| %s | %d | %.1f | %.1f | %.1f %% | %s | %.2f | %.2f | %+.2f | %s |\n",
                       m, c, ot, nt, r, bar ? (r >= 97 ? "yes" : "**no**") : "-",
                       of, nf, d, d <= 1 ? "yes" : "**no**"
            }' "$TMP/runs.tsv"
    done
done

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

echo "bench-report: wrote $DOC and docs/bench-{throughput,ttft,tpot}.$FMT from $RES" >&2
