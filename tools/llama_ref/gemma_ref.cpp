// Reference outputs of llama.cpp (libllama) for a GGUF model.
//
// build (from /work/ref/tools):
//   LL=/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp
//   g++ -O2 -std=c++17 gemma_ref.cpp -I$LL/include -I$LL/ggml/include -I$LL/vendor \
//       -L$LL/build/bin -lllama -lggml -lggml-base -Wl,-rpath,$LL/build/bin -o gemma_ref
//
// usage:
//   gemma_ref passage MODEL TEXT.txt OUT_PREFIX [TOPK=64] [FULL_LOGITS.f32]
//     Tokenizes TEXT (add_special = true: BOS, parse_special = false), decodes all
//     tokens as ONE batch (n_ctx = n_batch = n_ubatch = n_tokens rounded up to 256,
//     flash attention off, 2 threads, f16 KV cache (the default)), logits for every
//     position, and writes
//       OUT_PREFIX.tokens.i32  int32 [n_tokens]
//       OUT_PREFIX.topk.bin    per position p (0..n_tokens-1), little-endian:
//                              int32 ids[TOPK]   (logit descending, ties: lower id first)
//                              f32   logits[TOPK] (llama.cpp's raw logits of those ids)
//                              f32   logprobs[TOPK] = (float)((double)logit - lse)
//                              f32   lse = (float)(max + log(sum_i exp((double)(l_i - max))))
//       OUT_PREFIX.json        header: n_tokens, n_vocab, topk, record layout
//     and optionally every logit (f32 [n_tokens, n_vocab]) to FULL_LOGITS.f32.
//   gemma_ref greedy MODEL PROMPTS.json OUT.json [N_GEN=32]
//     PROMPTS.json: a JSON array of strings. Each prompt is tokenized with
//     add_special = true and parse_special = true, decoded as one batch (fresh
//     KV cache), then N_GEN greedy steps, one token per llama_decode; at each
//     step the argmax (ties: lower id) and top-1 minus top-2 logit are recorded.
//     Stops early at an end-of-generation token (it is recorded).
#include "llama.h"
#include "nlohmann/json.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

using json = nlohmann::ordered_json;

static std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & s, bool add_special, bool parse_special) {
    int n = -llama_tokenize(vocab, s.data(), (int) s.size(), nullptr, 0, add_special, parse_special);
    std::vector<llama_token> t(n);
    int m = llama_tokenize(vocab, s.data(), (int) s.size(), t.data(), n, add_special, parse_special);
    if (m != n) { fprintf(stderr, "tokenize failed\n"); exit(1); }
    return t;
}

static std::string detok(const llama_vocab * vocab, const std::vector<llama_token> & t) {
    std::vector<char> buf(t.size() * 64 + 64);
    int n = llama_detokenize(vocab, t.data(), (int) t.size(), buf.data(), (int) buf.size(), false, true);
    if (n < 0) { fprintf(stderr, "detokenize failed\n"); exit(1); }
    return std::string(buf.data(), n);
}

static llama_context * make_ctx(llama_model * model, int n_ctx) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_ubatch = n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "context failed\n"); exit(1); }
    return ctx;
}

static void decode(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, bool all_logits) {
    llama_batch b = llama_batch_init((int) toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); i++) {
        b.token[i] = toks[i];
        b.pos[i] = pos0 + (int) i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = all_logits || i + 1 == toks.size();
    }
    b.n_tokens = (int) toks.size();
    if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); exit(1); }
    llama_batch_free(b);
}

static int passage(llama_model * model, const char * text_path, const std::string & out, int topk, const char * full_path) {
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::ifstream f(text_path, std::ios::binary);
    std::stringstream ss; ss << f.rdbuf();
    const std::string text = ss.str();
    std::vector<llama_token> toks = tokenize(vocab, text, true, false);
    const int n = (int) toks.size();
    const int n_ctx = (n + 255) / 256 * 256;
    fprintf(stderr, "passage: %d tokens, n_ctx = n_batch = n_ubatch = %d\n", n, n_ctx);
    llama_context * ctx = make_ctx(model, n_ctx);
    decode(ctx, toks, 0, true);

    FILE * ft = fopen((out + ".tokens.i32").c_str(), "wb");
    fwrite(toks.data(), 4, n, ft); fclose(ft);
    FILE * fk = fopen((out + ".topk.bin").c_str(), "wb");
    FILE * ff = full_path ? fopen(full_path, "wb") : nullptr;
    std::vector<int> idx(n_vocab);
    std::vector<int32_t> ids(topk);
    std::vector<float> lg(topk), lp(topk);
    for (int p = 0; p < n; p++) {
        const float * l = llama_get_logits_ith(ctx, p);
        if (ff) fwrite(l, 4, n_vocab, ff);
        float mx = l[0];
        for (int i = 1; i < n_vocab; i++) mx = std::max(mx, l[i]);
        double s = 0.0;
        for (int i = 0; i < n_vocab; i++) s += std::exp((double) (l[i] - mx));
        const double lse = (double) mx + std::log(s);
        std::iota(idx.begin(), idx.end(), 0);
        std::partial_sort(idx.begin(), idx.begin() + topk, idx.end(), [&](int a, int b) {
            return l[a] > l[b] || (l[a] == l[b] && a < b);
        });
        for (int k = 0; k < topk; k++) {
            ids[k] = idx[k];
            lg[k] = l[idx[k]];
            lp[k] = (float) ((double) l[idx[k]] - lse);
        }
        const float lsef = (float) lse;
        fwrite(ids.data(), 4, topk, fk);
        fwrite(lg.data(), 4, topk, fk);
        fwrite(lp.data(), 4, topk, fk);
        fwrite(&lsef, 4, 1, fk);
    }
    fclose(fk);
    if (ff) fclose(ff);
    json h;
    h["n_tokens"] = n;
    h["n_vocab"] = n_vocab;
    h["topk"] = topk;
    h["tokens_file"] = out.substr(out.find_last_of('/') + 1) + ".tokens.i32";
    h["topk_file"] = out.substr(out.find_last_of('/') + 1) + ".topk.bin";
    h["record"] = "per position p = 0..n_tokens-1 (the logits after token p, i.e. predicting token p+1): "
                  "i32 ids[topk], f32 logits[topk], f32 logprobs[topk], f32 lse; little-endian; "
                  "record size 12*topk+4 bytes";
    std::ofstream(out + ".json") << h.dump(1) << "\n";
    llama_free(ctx);
    return 0;
}

static int greedy(llama_model * model, const char * prompts_path, const char * out_path, int n_gen) {
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    json prompts = json::parse(std::ifstream(prompts_path));
    llama_context * ctx = make_ctx(model, 512);
    json res = json::array();
    for (const auto & pj : prompts) {
        const std::string p = pj.get<std::string>();
        std::vector<llama_token> toks = tokenize(vocab, p, true, true);
        llama_memory_clear(llama_get_memory(ctx), true);
        decode(ctx, toks, 0, false);
        int pos = (int) toks.size();
        std::vector<llama_token> gen;
        std::vector<double> margins;
        for (int s = 0; s < n_gen; s++) {
            const float * l = llama_get_logits_ith(ctx, -1);
            int best = 0;
            for (int i = 1; i < n_vocab; i++) if (l[i] > l[best]) best = i;
            float second = -INFINITY;
            for (int i = 0; i < n_vocab; i++) if (i != best) second = std::max(second, l[i]);
            gen.push_back(best);
            margins.push_back((double) l[best] - (double) second);
            if (llama_vocab_is_eog(vocab, best)) break;
            decode(ctx, {best}, pos++, false);
        }
        json r;
        r["prompt"] = p;
        r["prompt_tokens"] = toks;
        r["generated"] = gen;
        r["top1_margin"] = margins;
        r["text"] = detok(vocab, gen);
        res.push_back(r);
        fprintf(stderr, "%s -> %s\n", p.c_str(), r["text"].get<std::string>().c_str());
    }
    std::ofstream(out_path) << res.dump(1) << "\n";
    llama_free(ctx);
    return 0;
}

int main(int argc, char ** argv) {
    if (argc < 5) { fprintf(stderr, "see the header of gemma_ref.cpp\n"); return 1; }
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[2], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    int rc = 1;
    if (!strcmp(argv[1], "passage")) {
        rc = passage(model, argv[3], argv[4], argc > 5 ? atoi(argv[5]) : 64, argc > 6 ? argv[6] : nullptr);
    } else if (!strcmp(argv[1], "greedy")) {
        rc = greedy(model, argv[3], argv[4], argc > 5 ? atoi(argv[5]) : 32);
    }
    llama_model_free(model);
    return rc;
}
