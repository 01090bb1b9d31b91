// A small Llama-2 forward pass for llama2.c checkpoints (stories260K): loads the legacy v0 format,
// runs token sequences with causal attention (GQA, RoPE, RMSNorm, SwiGLU), captures the inputs of
// every linear layer for calibration, and evaluates with linear layers replaced by quantized ones
// (weights dequantized, inputs through their activation quantizer). The embedding/classifier
// (tied) stays float, as in the paper.
#ifndef AXEQ_TOOLS_LLAMA2C_H_
#define AXEQ_TOOLS_LLAMA2C_H_

#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/quantizer.h"
#include "core/simulate.h"

namespace axeq {

struct Llama2cConfig {
  int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0,
      seq_len = 0;
};

struct Llama2cModel {
  Llama2cConfig config;
  MatrixXf token_embedding;  // [vocab, dim], tied classifier
  std::vector<Eigen::VectorXf> rms_att, rms_ffn;
  Eigen::VectorXf rms_final;
  // Linear layers by name ("layers.{l}.attention.wq", ".wk", ".wv", ".wo",
  // "layers.{l}.feed_forward.w1", ".w2", ".w3"), [out, in].
  std::map<std::string, MatrixXf> linears;
  std::vector<std::string> LinearNames() const;  // in execution order
};

absl::StatusOr<Llama2cModel> LoadLlama2c(const std::string& path);

// An integer datapath for a quantized linear: input codes, the P-bit register (wrapping or
// saturating, tiled with an outer register) over the int8 codes, then the zero-point correction,
// the per-output-channel scales and the bias in float. Overflows are counted across forwards.
struct IntegerLinear {
  MatrixXi8 codes;         // [out, in]
  Eigen::VectorXf scales;  // [out]
  DatapathSpec datapath;
  mutable int64_t dot_products = 0, overflowing = 0;
};

// Per-layer replacement used for evaluating a quantized model.
struct QuantizedLinear {
  MatrixXf weight;                           // dequantized [out, in] (fake mode)
  std::optional<ActivationQuantizer> input;  // applied to the layer's inputs
  std::optional<Eigen::VectorXf> bias;
  std::optional<IntegerLinear> integer;  // set: the integer datapath replaces `weight`
};

// Runs tokens (one sequence, length <= seq_len); returns logits [T, vocab]. capture(name, X)
// receives each linear layer's float inputs [T, in]. Layers in `quantized` are replaced.
MatrixXf Llama2cForward(
    const Llama2cModel& model, const std::vector<int>& tokens,
    const std::map<std::string, QuantizedLinear>* quantized = nullptr,
    const std::function<void(const std::string&, const MatrixXf&)>& capture = {});

// Returns the mean negative log-likelihood per predicted token over the sequences.
double MeanNll(const Llama2cModel& model, const std::vector<std::vector<int>>& seqs,
               const std::map<std::string, QuantizedLinear>* quantized = nullptr);

// Samples a sequence from BOS (id 1) at `temperature` (0 = greedy) for up to `length` tokens.
std::vector<int> Llama2cGenerate(const Llama2cModel& model, int length, float temperature,
                                 std::mt19937_64& rng);

// The llama2.c tokenizer (tok512.bin): token strings for decoding.
absl::StatusOr<std::vector<std::string>> LoadLlama2cVocab(const std::string& path, int vocab_size);
std::string DecodeTokens(const std::vector<std::string>& vocab, const std::vector<int>& tokens);

}  // namespace axeq

#endif  // AXEQ_TOOLS_LLAMA2C_H_
