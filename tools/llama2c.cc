// llama2.c checkpoint loader and a batched (whole-sequence) Llama-2 forward pass.
#include "tools/llama2c.h"

#include <cmath>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace axeq {

std::vector<std::string> Llama2cModel::LinearNames() const {
  std::vector<std::string> names;
  for (int l = 0; l < config.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    for (const char* n : {"attention.wq", "attention.wk", "attention.wv", "attention.wo",
                          "feed_forward.w1", "feed_forward.w3", "feed_forward.w2"})
      names.push_back(p + n);
  }
  return names;
}

absl::StatusOr<Llama2cModel> LoadLlama2c(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open checkpoint ", path));
  int32_t h[7];
  if (!in.read(reinterpret_cast<char*>(h), sizeof(h)))
    return absl::InvalidArgumentError(absl::StrCat(path, ": too short for a llama2.c header"));
  Llama2cModel m;
  auto& c = m.config;
  c = {h[0], h[1], h[2], h[3], h[4], std::abs(h[5]), h[6]};
  if (c.dim <= 0 || c.dim > 16384 || c.hidden_dim <= 0 || c.n_layers <= 0 || c.n_layers > 256 ||
      c.n_heads <= 0 || c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0 ||
      c.dim % c.n_heads != 0 || c.vocab_size <= 0 || c.seq_len <= 0)
    return absl::InvalidArgumentError(absl::StrCat(path, ": implausible llama2.c header"));
  const int hs = c.dim / c.n_heads, kv_dim = hs * c.n_kv_heads;
  bool ok = true;
  auto read = [&](int64_t rows, int64_t cols) {
    MatrixXf t(rows, cols);
    ok = ok && static_cast<bool>(in.read(reinterpret_cast<char*>(t.data()), rows * cols * 4));
    return t;
  };
  m.token_embedding = read(c.vocab_size, c.dim);
  auto vecs = [&](std::vector<Eigen::VectorXf>* out) {
    MatrixXf t = read(c.n_layers, c.dim);
    for (int l = 0; l < c.n_layers; ++l) out->push_back(t.row(l).transpose());
  };
  auto mats = [&](const char* name, int rows, int cols) {
    for (int l = 0; l < c.n_layers; ++l)
      m.linears[absl::StrCat("layers.", l, ".", name)] = read(rows, cols);
  };
  vecs(&m.rms_att);
  mats("attention.wq", c.dim, c.dim);
  mats("attention.wk", kv_dim, c.dim);
  mats("attention.wv", kv_dim, c.dim);
  mats("attention.wo", c.dim, c.dim);
  vecs(&m.rms_ffn);
  mats("feed_forward.w1", c.hidden_dim, c.dim);
  mats("feed_forward.w2", c.dim, c.hidden_dim);
  mats("feed_forward.w3", c.hidden_dim, c.dim);
  m.rms_final = read(1, c.dim).row(0).transpose();
  if (!ok) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated checkpoint"));
  return m;
}

namespace {

MatrixXf RmsNorm(const MatrixXf& x, const Eigen::VectorXf& w) {
  MatrixXf out(x.rows(), x.cols());
  for (int64_t t = 0; t < x.rows(); ++t) {
    const float ss = 1.0f / std::sqrt(x.row(t).squaredNorm() / x.cols() + 1e-5f);
    out.row(t) = x.row(t).cwiseProduct(w.transpose()) * ss;
  }
  return out;
}

void Rope(MatrixXf* x, int head_size) {
  for (int64_t pos = 0; pos < x->rows(); ++pos)
    for (int64_t i = 0; i + 1 < x->cols(); i += 2) {
      const float freq = 1.0f / std::pow(10000.0f, static_cast<float>(i % head_size) / head_size);
      const float v = pos * freq, fcr = std::cos(v), fci = std::sin(v);
      const float a = (*x)(pos, i), b = (*x)(pos, i + 1);
      (*x)(pos, i) = a * fcr - b * fci;
      (*x)(pos, i + 1) = a * fci + b * fcr;
    }
}

// y = s_x * s_c * (acc - zp * sum_i q_ci) with acc the register's value of sum_i q_ci x_i.
MatrixXf IntegerForward(const IntegerLinear& l, const ActivationQuantizer& act,
                        const MatrixXf& in) {
  auto run = RunDatapath(l.codes, InputCodes(in, act), l.datapath);
  if (!run.ok())
    return MatrixXf::Constant(in.rows(), l.codes.rows(), NAN);  // specs were checked at load
  l.dot_products += run->stats.dot_products;
  l.overflowing += run->stats.overflowing_dot_products;
  const Eigen::VectorXd row_sums = l.codes.cast<double>().rowwise().sum();
  MatrixXf y(in.rows(), l.codes.rows());
  for (int64_t d = 0; d < y.rows(); ++d)
    for (int64_t c = 0; c < y.cols(); ++c)
      y(d, c) = static_cast<float>(
          static_cast<double>(act.scale) * l.scales[c] *
          (static_cast<double>(run->outputs(d, c)) - act.zero_point * row_sums[c]));
  return y;
}

}  // namespace

MatrixXf Llama2cForward(const Llama2cModel& m, const std::vector<int>& tokens,
                        const std::map<std::string, QuantizedLinear>* quantized,
                        const std::function<void(const std::string&, const MatrixXf&)>& capture) {
  const auto& c = m.config;
  const int64_t t_len = static_cast<int64_t>(tokens.size());
  const int hs = c.dim / c.n_heads, group = c.n_heads / c.n_kv_heads;
  MatrixXf x(t_len, c.dim);
  for (int64_t t = 0; t < t_len; ++t) x.row(t) = m.token_embedding.row(tokens[t]);
  auto linear = [&](const std::string& name, const MatrixXf& in) -> MatrixXf {
    if (capture) capture(name, in);
    if (quantized) {
      auto it = quantized->find(name);
      if (it != quantized->end()) {
        const QuantizedLinear& ql = it->second;
        MatrixXf y;
        if (ql.integer && ql.input) {
          y = IntegerForward(*ql.integer, *ql.input, in);
        } else {
          const MatrixXf xin = ql.input ? ql.input->Apply(in) : in;
          y = xin * ql.weight.transpose();
        }
        if (it->second.bias) y.rowwise() += it->second.bias->transpose();
        return y;
      }
    }
    return in * m.linears.at(name).transpose();
  };
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    MatrixXf xn = RmsNorm(x, m.rms_att[l]);
    MatrixXf q = linear(p + "attention.wq", xn), k = linear(p + "attention.wk", xn),
             v = linear(p + "attention.wv", xn);
    Rope(&q, hs);
    Rope(&k, hs);
    MatrixXf att_out(t_len, c.dim);
    for (int h = 0; h < c.n_heads; ++h) {
      const int kvh = h / group;
      MatrixXf s =
          q.middleCols(h * hs, hs) * k.middleCols(kvh * hs, hs).transpose() / std::sqrt(float(hs));
      for (int64_t i = 0; i < t_len; ++i) {
        const float mx = s.row(i).head(i + 1).maxCoeff();
        float sum = 0;
        for (int64_t j = 0; j < t_len; ++j) {
          s(i, j) = j <= i ? std::exp(s(i, j) - mx) : 0.0f;
          sum += s(i, j);
        }
        s.row(i) /= sum;
      }
      att_out.middleCols(h * hs, hs) = s * v.middleCols(kvh * hs, hs);
    }
    x += linear(p + "attention.wo", att_out);
    xn = RmsNorm(x, m.rms_ffn[l]);
    MatrixXf h1 = linear(p + "feed_forward.w1", xn), h3 = linear(p + "feed_forward.w3", xn);
    MatrixXf hb = (h1.array() / (1.0f + (-h1.array()).exp()) * h3.array()).matrix();
    x += linear(p + "feed_forward.w2", hb);
  }
  return RmsNorm(x, m.rms_final) * m.token_embedding.transpose();
}

double MeanNll(const Llama2cModel& model, const std::vector<std::vector<int>>& seqs,
               const std::map<std::string, QuantizedLinear>* quantized) {
  double nll = 0;
  int64_t n = 0;
  for (const auto& s : seqs) {
    const MatrixXf logits = Llama2cForward(model, s, quantized);
    for (size_t t = 0; t + 1 < s.size(); ++t) {
      const float mx = logits.row(t).maxCoeff();
      const double lse = mx + std::log((logits.row(t).array() - mx).exp().sum());
      nll += lse - logits(t, s[t + 1]);
      ++n;
    }
  }
  return n ? nll / n : 0.0;
}

std::vector<int> Llama2cGenerate(const Llama2cModel& model, int length, float temperature,
                                 std::mt19937_64& rng) {
  std::vector<int> tokens{1};
  std::uniform_real_distribution<double> u(0, 1);
  while (static_cast<int>(tokens.size()) < std::min(length, model.config.seq_len)) {
    const MatrixXf logits = Llama2cForward(model, tokens);
    Eigen::VectorXf last = logits.row(logits.rows() - 1).transpose();
    int next;
    if (temperature <= 0) {
      last.maxCoeff(&next);
    } else {
      last /= temperature;
      const float mx = last.maxCoeff();
      Eigen::VectorXd p = (last.array() - mx).exp().cast<double>();
      p /= p.sum();
      double r = u(rng), acc = 0;
      next = static_cast<int>(p.size()) - 1;
      for (int i = 0; i < p.size(); ++i)
        if ((acc += p(i)) >= r) {
          next = i;
          break;
        }
    }
    if (next == 1) break;  // BOS delimits stories
    tokens.push_back(next);
  }
  return tokens;
}

absl::StatusOr<std::vector<std::string>> LoadLlama2cVocab(const std::string& path, int vocab_size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer ", path));
  int32_t max_len;
  in.read(reinterpret_cast<char*>(&max_len), 4);
  std::vector<std::string> vocab(vocab_size);
  for (int i = 0; i < vocab_size; ++i) {
    float score;
    int32_t len;
    if (!in.read(reinterpret_cast<char*>(&score), 4) ||
        !in.read(reinterpret_cast<char*>(&len), 4) || len < 0 || len > 4096)
      return absl::InvalidArgumentError(absl::StrCat(path, ": malformed at token ", i));
    vocab[i].resize(len);
    in.read(vocab[i].data(), len);
  }
  return vocab;
}

std::string DecodeTokens(const std::vector<std::string>& vocab, const std::vector<int>& tokens) {
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int t = tokens[i];
    if (t < 0 || t >= static_cast<int>(vocab.size()) || t == 1) continue;
    std::string piece = vocab[t];
    if (i > 0 && tokens[i - 1] == 1 && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    unsigned byte;
    if (std::sscanf(piece.c_str(), "<0x%02X>", &byte) == 1)
      piece = std::string(1, static_cast<char>(byte));
    out += piece;
  }
  return out;
}

}  // namespace axeq
