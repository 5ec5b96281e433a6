/*
 * Runs cuda_sampling.cu's host packing and its kernel in a host emulation
 * (cuda_util.cuh here: 1024 std::threads per block, barriers for
 * __syncthreads and the warp shuffles) against src/sampler.c, without a
 * GPU.  Built and run by run.sh.
 *
 *   A  greedy rows with eos mask, logit_bias and penalties: tokens, the
 *      edited logits (bit for bit) and logprobs vs sampler_sample();
 *   B  sampled rows (temperature, top-k, top-p, min-p, ties): the token
 *      equals the id-order walk of the kept set with the kernel's
 *      fixed-point masses, computed here by sorting;
 *   C  (second argument C) ties at the top-p boundary, top-k over the
 *      shared-memory list, top-5 logprobs on tied rows.
 */
extern "C" {
#include "sampler.h"
}
#include "cuda_sampling.cuh"
#include <stdio.h>
#include <vector>
#include <algorithm>

thread_local emu_dim threadIdx;
thread_local emu_dim blockIdx;
emu_dim blockDim = { 1024, 1, 1 };
std::barrier<> *g_block_bar;
std::barrier<> *g_warp_bar[32];
uint64_t g_x[32][32];

void emu_launch(int n, std::function<void()> k)
{
    std::barrier<> bar(1024);
    std::vector<std::barrier<> *> wb;
    g_block_bar = &bar;
    for (int w = 0; w < 32; w++)
        g_warp_bar[w] = new std::barrier<>(32);
    std::vector<std::thread> th;
    for (int t = 0; t < 1024; t++)
        th.emplace_back([&, t] {
            threadIdx = { (unsigned)t, 0, 0 };
            for (int b = 0; b < n; b++) {
                blockIdx = { (unsigned)b, 0, 0 };
                k();
                bar.arrive_and_wait();
            }
        });
    for (auto &x : th)
        x.join();
    for (int w = 0; w < 32; w++)
        delete g_warp_bar[w];
}

static uint64_t st = 1;
static uint64_t rn() { st ^= st << 13; st ^= st >> 7; st ^= st << 17; return st; }
static double ru() { return (double)(rn() >> 11) * 0x1.0p-53; }
static double rnorm() { double u = ru(), v = ru(); return sqrt(-2 * log(u + 1e-300)) * cos(6.283185307179586 * v); }

static void row(float *l, int V, uint64_t seed, int hot, float q)
{
    st = seed * 0x9e3779b97f4a7c15ull + 7;
    for (int i = 0; i < V; i++) l[i] = (float)(1.5 * rnorm());
    for (int k = 0; k < hot; k++) l[rn() % V] += (float)(8 + 6 * ru());
    if (q > 0) for (int i = 0; i < V; i++) l[i] = roundf(l[i] / q) * q;
}

static sampler_params defp() { sampler_params p; memset(&p, 0, sizeof p); p.temperature = 1; p.top_p = 1; p.repetition_penalty = 1; return p; }

/* expected token: kept set as sampler.h defines it, walked in id order with
 * fixed-point masses (what the kernel does) */
static int expect(const float *l, int V, const sampler_params *p, double u, int *n_kept)
{
    float m = -INFINITY; for (int i = 0; i < V; i++) m = l[i] > m ? l[i] : m;
    float kth = -INFINITY;
    if (p->top_k > 0 && p->top_k < V) { std::vector<float> v(l, l + V); std::sort(v.begin(), v.end(), std::greater<float>()); kth = v[p->top_k - 1]; }
    float inv_t = 1.0f / p->temperature;
    std::vector<std::pair<float,int>> c; std::vector<uint64_t> fx(V, 0);
    for (int i = 0; i < V; i++) { if (!(l[i] >= kth)) continue; float w = expf((l[i] - m) * inv_t); if (w >= p->min_p && w > 0) { c.push_back({w, i}); fx[i] = (uint64_t)nearbyint((double)w * 4398046511104.0); } }
    uint64_t tot = 0; for (auto &e : c) tot += fx[e.second];
    std::vector<char> keep(V, 0);
    if (p->top_p < 1) {
        std::sort(c.begin(), c.end(), [](auto a, auto b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
        uint64_t tgt = (uint64_t)ceil((double)p->top_p * (double)tot), acc = 0;
        for (auto &e : c) { if (acc >= tgt) break; keep[e.second] = 1; acc += fx[e.second]; }
    } else for (auto &e : c) keep[e.second] = 1;
    uint64_t kt = 0; int nk = 0; for (int i = 0; i < V; i++) if (keep[i]) { kt += fx[i]; nk++; }
    *n_kept = nk;
    uint64_t x = (uint64_t)(u * (double)kt); if (x >= kt) x = kt - 1;
    uint64_t acc = 0; for (int i = 0; i < V; i++) if (keep[i]) { if (x < acc + fx[i]) return i; acc += fx[i]; }
    return -1;
}

int main(int argc, char **argv)
{
    const int V = argc > 1 ? atoi(argv[1]) : 3001;
    const int R = 24;
    std::vector<float> lg((size_t)R * V), cpu((size_t)R * V);
    std::vector<sampler_params> ps(R);
    std::vector<sampler_history> hs(R);
    std::vector<int32_t> hist((size_t)R * 300);
    std::vector<llm_logit_bias> bias((size_t)R * 4);
    std::vector<llm_sample_row> sr(R);
    std::vector<sampler_result> res(R);
    sampler_scratch *scr = sampler_scratch_create(V);
    llm_sampling smp; memset(&smp, 0, sizeof smp);
    char err[512];
    int fails = 0;
    static const int32_t eos[3] = { 7, 11, 1 << 30 };

    if (argc > 2 && argv[2][0] == 'C') {
        /* C: ties at the top-p boundary and top-k over the list capacity */
        struct { float tp; int tk; int flat; } T[] = { {0.5f, 0, 1}, {0.9f, 100, 1}, {0.37f, 0, 2}, {1, 4500, 0}, {0.6f, 4500, 0}, {0.999f, 0, 0} };
        std::vector<sampler_params> bp(R);
        int bad = 0;
        for (size_t ti = 0; ti < sizeof T / sizeof T[0]; ti++) {
            for (int k = 0; k < R; k++) {
                float *l = &lg[(size_t)k * V];
                if (T[ti].flat == 1) for (int i = 0; i < V; i++) l[i] = 0.0f;
                else if (T[ti].flat == 2) for (int i = 0; i < V; i++) l[i] = (float)(i % 3);
                else row(l, V, 4000 + k, 15, 0);
                bp[k] = defp(); bp[k].top_p = T[ti].tp; bp[k].top_k = T[ti].tk;
                bp[k].top_logprobs = 5;
                sr[k].p = &bp[k]; sr[k].h = NULL; sr[k].uniform = (k + 0.5) / R;
            }
            std::vector<float> d2 = lg;
            if (llm_sampling_enqueue(&smp, d2.data(), V, sr.data(), R, NULL, err, sizeof err)) { printf("enqueue: %s\n", err); return 1; }
            llm_sampling_collect(&smp, sr.data(), res.data());
            for (int k = 0; k < R; k++) {
                int nk; int e = expect(&lg[(size_t)k * V], V, &bp[k], sr[k].uniform, &nk);
                sampler_rng rng; sampler_result r1; sampler_rng_seed(&rng, 1);
                std::vector<float> c(&lg[(size_t)k * V], &lg[(size_t)k * V] + V);
                sampler_sample(c.data(), V, &bp[k], NULL, &rng, scr, &r1);
                int tb = 0; for (int i = 0; i < 5; i++) tb += r1.top[i].token != res[k].top[i].token;
                if (e != res[k].token || tb) { bad++; printf("C %zu row %d: gpu %d expected %d (kept %d), top ids differ %d\n", ti, k, res[k].token, e, nk, tb); }
                if (k == R - 1) printf("C %zu: kept %d, last token %d\n", ti, nk, res[k].token);
            }
        }
        printf("C: %d mismatches\n%s\n", bad, bad ? "EMU FAILED" : "EMU PASSED");
        return bad != 0;
    }
    /* A: greedy + edits + logprobs vs the CPU, exact */
    for (int k = 0; k < R; k++) {
        row(&lg[(size_t)k * V], V, 100 + k, 10, k % 5 == 2 ? 0.5f : 0);
        st = 55 + k;
        for (int i = 0; i < 300; i++) hist[(size_t)k * 300 + i] = (int32_t)(i % 2 ? rn() % 50 : rn() % V);
        ps[k] = defp();
        ps[k].temperature = 0;
        ps[k].repetition_penalty = k % 3 == 0 ? 1.0f : (k % 3 == 1 ? 1.3f : 0.7f);
        ps[k].presence_penalty = k % 4 == 1 ? 0.4f : 0;
        ps[k].frequency_penalty = k % 4 == 2 ? 0.3f : 0;
        ps[k].suppress_eos = k % 2; ps[k].eos_ids = eos; ps[k].n_eos = 3;
        if (k % 3 == 2) { llm_logit_bias *b = &bias[(size_t)k * 4]; for (int i = 0; i < 4; i++) { b[i].token = (int32_t)(rn() % V); b[i].bias = (float)(ru() * 10 - 5); } b[2].token = b[0].token; ps[k].logit_bias = b; ps[k].n_logit_bias = 4; }
        ps[k].logprobs = k % 2; ps[k].top_logprobs = k % 4 == 3 ? 20 : (k % 4 == 1 ? 3 : 0);
        hs[k].prompt = &hist[(size_t)k * 300]; hs[k].n_prompt = 200; hs[k].generated = &hist[(size_t)k * 300 + 200]; hs[k].n_generated = 100;
        sr[k].p = &ps[k]; sr[k].h = &hs[k]; sr[k].uniform = 0;
    }
    lg[(size_t)3 * V + 5] = NAN;
    for (int i = 0; i < V; i++) lg[(size_t)4 * V + i] = -INFINITY;
    cpu = lg;
    std::vector<float> dev = lg;
    if (llm_sampling_enqueue(&smp, dev.data(), V, sr.data(), R, NULL, err, sizeof err)) { printf("enqueue: %s\n", err); return 1; }
    llm_sampling_collect(&smp, sr.data(), res.data());
    int bad_t = 0, bad_v = 0, bad_lp = 0; double worst = 0;
    for (int k = 0; k < R; k++) {
        sampler_rng rng; sampler_result r1; sampler_rng_seed(&rng, 1);
        if (sampler_sample(&cpu[(size_t)k * V], V, &ps[k], &hs[k], &rng, scr, &r1)) { printf("cpu refused row %d\n", k); fails++; continue; }
        if (r1.token != res[k].token) { bad_t++; printf("A row %d token gpu %d cpu %d\n", k, res[k].token, r1.token); }
        for (int i = 0; i < V; i++) { float a = dev[(size_t)k * V + i], b = cpu[(size_t)k * V + i]; if (!(a == b) && !(isnan(a) && isnan(b))) { if (bad_v < 5) printf("A row %d id %d gpu %g cpu %g\n", k, i, a, b); bad_v++; } }
        if (ps[k].logprobs || ps[k].top_logprobs) {
            if (r1.n_top != res[k].n_top) { bad_lp++; printf("A row %d n_top %d vs %d\n", k, res[k].n_top, r1.n_top); }
            for (int i = 0; i < r1.n_top && i < res[k].n_top; i++) { if (r1.top[i].token != res[k].top[i].token) { bad_lp++; printf("A row %d top %d id %d vs %d\n", k, i, res[k].top[i].token, r1.top[i].token); } double d = fabs(r1.top[i].logprob - res[k].top[i].logprob); if (d > worst) worst = d; }
            double d = fabs(r1.logprob - res[k].logprob); if (d > worst || isnan(d)) worst = d;
        }
    }
    printf("A: greedy/edits/logprobs: %d token, %d value, %d logprob mismatches, worst lp diff %.3g\n", bad_t, bad_v, bad_lp, worst);
    fails += bad_t + bad_v + bad_lp + (worst > 1e-3);

    /* B: sampled rows: the token equals the fixed-point id-order walk of
     * the kept set (exact), for several settings and uniforms */
    struct { float t, tp, mp; int tk; float q; } S[] = {
        {1, 1, 0, 0, 0}, {0.7f, 1, 0, 20, 0}, {1, 0.8f, 0, 0, 0}, {0.7f, 0.8f, 0, 20, 0}, {1, 1, 0.05f, 0, 0},
        {1.3f, 0.95f, 0.01f, 1000, 0}, {1, 1, 0, 2500, 0}, {1, 0.5f, 0, 50, 0.5f}, {1, 0.3f, 0, 0, 0.5f}, {0.5f, 0.9f, 0, 3, 1.0f},
    };
    int bad_b = 0, total_b = 0;
    std::vector<sampler_params> bp(R);
    for (size_t si = 0; si < sizeof S / sizeof S[0]; si++) {
        for (int k = 0; k < R; k++) {
            row(&lg[(size_t)k * V], V, 900 + si * 100 + (k % 3), 15, S[si].q);
            bp[k] = defp(); bp[k].temperature = S[si].t; bp[k].top_p = S[si].tp; bp[k].min_p = S[si].mp; bp[k].top_k = S[si].tk;
            bp[k].logprobs = k % 2;
            sr[k].p = &bp[k]; sr[k].h = NULL; sr[k].uniform = (k + 0.37) / R;
        }
        std::vector<float> d2 = lg;
        if (llm_sampling_enqueue(&smp, d2.data(), V, sr.data(), R, NULL, err, sizeof err)) { printf("enqueue: %s\n", err); return 1; }
        llm_sampling_collect(&smp, sr.data(), res.data());
        int nk = 0;
        for (int k = 0; k < R; k++) {
            int e = expect(&lg[(size_t)k * V], V, &bp[k], sr[k].uniform, &nk);
            total_b++;
            if (e != res[k].token) { bad_b++; printf("B setting %zu row %d: gpu %d expected %d (kept %d)\n", si, k, res[k].token, e, nk); }
        }
        printf("B setting %zu (T=%g top_p=%g min_p=%g top_k=%d q=%g): kept %d in the last row\n", si, S[si].t, S[si].tp, S[si].mp, S[si].tk, S[si].q, nk);
    }
    printf("B: %d of %d sampled tokens differ from the expected walk\n", bad_b, total_b);
    fails += bad_b;
    printf("%s\n", fails ? "EMU FAILED" : "EMU PASSED");
    llm_sampling_free(&smp);
    sampler_scratch_free(scr);
    return fails != 0;
}
