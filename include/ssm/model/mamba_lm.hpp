#pragma once
/// \file
/// \brief The Mamba language model: embedding, n_layer residual blocks, final RMSNorm, head.
///
/// mamba_ssm's `MambaLMHeadModel` and transformers' `MambaForCausalLM`:
/// \f[
///   h_0 = W_{\mathrm{emb}}[\mathrm{ids}],\quad
///   (h_i, r_i) = \mathrm{block}_i(h_{i-1}, r_{i-1}),\quad
///   \mathrm{logits} = W_{\mathrm{head}}\, \mathrm{RMSNorm}(h_n + r_n),
/// \f]
/// with the residual stream \f$r\f$ in fp32. `forward` runs the scan over a whole prompt
/// (prefill); `step` decodes one token per sequence at a cost independent of the context length,
/// carrying a `mamba_lm::cache` of every layer's conv and SSM states, which can be copied (to fork
/// a stream), saved and restored.

#include <cstdint>
#include <cstring>
#include <istream>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include <ssm/blocks/mamba.hpp>
#include <ssm/core/error.hpp>
#include <ssm/linear/embedding.hpp>
#include <ssm/linear/linear.hpp>
#include <ssm/model/weights.hpp>
#include <ssm/norm/rms_norm.hpp>

namespace ssm {

/// \brief Whether an execution space runs a decoding step of every block at once.
///
/// The primary template does not: `mamba_lm::step` runs the blocks one after another (each
/// perhaps fused by `mamba_block_step_backend`). A backend that does specialises it with
/// `fused = true`, `scratch_words<T>(config)` (device words the model keeps for it), `takes(batch)`
/// (a cheap first answer, before the blocks' tensors are gathered), `fuses(config, layers)`
/// and `run(space, config, layers, scratch)`, where `layers` holds every block's
/// `mamba_block_step_params` in order; `run` must leave the hidden and residual streams and every
/// state as the blocks' steps do. `Kokkos::Cuda` does (`ssm/model/cuda/stack_step.cuh`).
/// \tparam ExecSpace a Kokkos execution space.
/// \tparam Enable room for a partial specialisation that selects a family of spaces.
template <class ExecSpace, class Enable = void>
struct mamba_stack_step_backend {
  static constexpr bool fused = false;  ///< the blocks step one after another
};

/// \brief A Mamba-1 language model on an execution space.
///
/// Holds scratch buffers between calls, so one object must not run two calls at once.
/// \tparam ExecSpace Kokkos execution space; weights, activations and caches live in its memory space.
/// \tparam T activation storage type (the logits have it too). \tparam Wt weight storage type.
template <class ExecSpace, class T = float, class Wt = T>
class mamba_lm {
 public:
  using memory_space = typename ExecSpace::memory_space;     ///< where everything lives
  using activation_type = T;                                  ///< storage type of activations and logits
  using weight_type = Wt;                                     ///< storage type of the weights
  using weights_type = mamba_lm_weights<Wt, memory_space>;   ///< the weights
  using block_type = mamba_block<ExecSpace, T, Wt>;          ///< one residual block
  using state_type = typename block_type::state_type;        ///< one block's recurrent state
  /// \brief Contiguous tensors of rank 2.
  /// \tparam V element type.
  template <class V>
  using tensor2 = Kokkos::View<V**, Kokkos::LayoutRight, memory_space>;
  /// \brief Contiguous tensors of rank 3.
  /// \tparam V element type.
  template <class V>
  using tensor3 = Kokkos::View<V***, Kokkos::LayoutRight, memory_space>;

  /// \brief The recurrent state of every layer for B sequences: what decoding carries.
  struct cache {
    std::vector<state_type> layers;  ///< n_layer states, each conv (B, D, W-1) and ssm (B, D, N)

    /// \brief Number of sequences B. \return B (0 for an empty cache).
    std::size_t batch() const { return layers.empty() ? 0 : layers.front().ssm.extent(0); }

    /// \brief A deep copy, to fork a stream: both continue independently.
    /// \return the copy.
    cache clone() const {
      cache copy;
      for (auto const& s : layers) {
        state_type c{decltype(s.conv)(s.conv.label(), s.conv.extent(0), s.conv.extent(1), s.conv.extent(2)),
                     decltype(s.ssm)(s.ssm.label(), s.ssm.extent(0), s.ssm.extent(1), s.ssm.extent(2))};
        Kokkos::deep_copy(c.conv, s.conv);
        Kokkos::deep_copy(c.ssm, s.ssm);
        copy.layers.push_back(c);
      }
      return copy;
    }

    /// \brief Write the cache to a binary stream (a small header, then every layer's states).
    /// \param out the stream. \throws ssm::error if the stream fails.
    void save(std::ostream& out) const {
      header h{};
      std::memcpy(h.magic, magic(), sizeof h.magic);
      h.layers = layers.size();
      if (!layers.empty()) {
        auto const& s = layers.front();
        h.batch = s.ssm.extent(0), h.channels = s.ssm.extent(1), h.history = s.conv.extent(2), h.state = s.ssm.extent(2);
      }
      h.activation_bytes = sizeof(T);
      out.write(reinterpret_cast<char const*>(&h), sizeof h);
      for (auto const& s : layers) {
        auto const conv = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), s.conv);
        auto const ssm = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), s.ssm);
        out.write(reinterpret_cast<char const*>(conv.data()), static_cast<std::streamsize>(conv.span() * sizeof(T)));
        out.write(reinterpret_cast<char const*>(ssm.data()), static_cast<std::streamsize>(ssm.span() * sizeof(float)));
      }
      if (!out) throw error("ssm::mamba_lm::cache::save: the stream failed");
    }

    /// \brief Read a cache written by `save`, checking it fits the model.
    /// \param in the stream. \param config the model the cache is for.
    /// \return the cache. \throws ssm::error naming what does not match, or a truncated stream.
    static cache load(std::istream& in, model_config const& config) {
      header h{};
      in.read(reinterpret_cast<char*>(&h), sizeof h);
      char const* fn = "ssm::mamba_lm::cache::load";
      if (!in || std::memcmp(h.magic, magic(), sizeof h.magic) != 0) throw error(std::string(fn) + ": not a saved ssm cache");
      if (h.layers != static_cast<std::uint64_t>(config.n_layer) || h.channels != static_cast<std::uint64_t>(config.d_inner) ||
          h.history != static_cast<std::uint64_t>(config.d_conv - 1) || h.state != static_cast<std::uint64_t>(config.d_state) ||
          h.activation_bytes != sizeof(T) || h.batch == 0 || h.batch > (1u << 20))
        throw error(std::string(fn) + ": the cache was saved for another model, batch or activation type");
      cache c;
      for (std::uint64_t i = 0; i < h.layers; ++i) {
        auto s = state_type::zeros(config.mixer(), static_cast<int>(h.batch));
        auto conv = Kokkos::create_mirror_view(s.conv);
        auto ssm = Kokkos::create_mirror_view(s.ssm);
        in.read(reinterpret_cast<char*>(conv.data()), static_cast<std::streamsize>(conv.span() * sizeof(T)));
        in.read(reinterpret_cast<char*>(ssm.data()), static_cast<std::streamsize>(ssm.span() * sizeof(float)));
        if (!in) throw error(std::string(fn) + ": the stream ended inside layer " + std::to_string(i));
        Kokkos::deep_copy(s.conv, conv);
        Kokkos::deep_copy(s.ssm, ssm);
        c.layers.push_back(s);
      }
      return c;
    }

   private:
    struct header {
      char magic[8];
      std::uint64_t layers, batch, channels, history, state, activation_bytes;
    };
    static char const* magic() { return "ssmcach1"; }
  };

  /// \brief A model over the given weights (shared, not copied).
  /// \param weights every weight; their config gives the sizes.
  /// \throws ssm::shape_error if a weight has the wrong shape.
  explicit mamba_lm(weights_type weights) : weights_(std::move(weights)) {
    auto const& c = weights_.config;
    detail::require(static_cast<int>(weights_.mixers.size()) == c.n_layer &&
                        static_cast<int>(weights_.norms.size()) == c.n_layer,
                    "ssm::mamba_lm", "the weights must hold n_layer = " + std::to_string(c.n_layer) + " blocks");
    auto const rows = static_cast<std::size_t>(c.padded_vocab_size), E = static_cast<std::size_t>(c.d_model);
    detail::require(weights_.embedding.extent(0) == rows && weights_.embedding.extent(1) == E, "ssm::mamba_lm",
                    "the embedding must be (V, E) = " + detail::shape_string(rows, E));
    detail::require(weights_.lm_head.extent(0) == rows && weights_.lm_head.extent(1) == E, "ssm::mamba_lm",
                    "lm_head must be (V, E) = " + detail::shape_string(rows, E));
    detail::require(weights_.norm_f.extent(0) == E, "ssm::mamba_lm", "norm_f must be (E)");
    for (int i = 0; i < c.n_layer; ++i)
      blocks_.emplace_back(mamba_mixer<ExecSpace, T, Wt>(c.mixer(), weights_.mixers[i]), weights_.norms[i]);
  }

  /// \brief The sizes. \return the model's configuration.
  model_config const& config() const { return weights_.config; }
  /// \brief The weights. \return the weights.
  weights_type const& weights() const { return weights_; }
  /// \brief Rows of the logits: the padded vocabulary. \return V.
  std::size_t vocab() const { return static_cast<std::size_t>(config().padded_vocab_size); }

  /// \brief A zero cache for `batch` sequences: the state before their first token.
  /// \param batch B. \return the cache.
  cache make_cache(int batch) const {
    cache c;
    for (int i = 0; i < config().n_layer; ++i) c.layers.push_back(state_type::zeros(config().mixer(), batch));
    return c;
  }

  /// \brief Run B sequences of L tokens (prefill; asynchronous on `space`).
  /// \param space the execution space instance.
  /// \param ids (B, L) token ids in [0, V).
  /// \param logits (B, L, V) for every position, or (B, 1, V) for the last position only.
  /// \param state if given, the cache before token 0 on entry and after token L-1 on return;
  ///              if null, the sequences start from a zero state.
  /// \throws ssm::shape_error for wrong shapes or ids outside the vocabulary.
  void forward(ExecSpace const& space, Kokkos::View<const std::int32_t**, Kokkos::LayoutRight, memory_space> const& ids,
               tensor3<T> const& logits, cache* state = nullptr) const {
    char const* fn = "ssm::mamba_lm::forward";
    std::size_t const B = ids.extent(0), L = ids.extent(1), E = static_cast<std::size_t>(config().d_model);
    detail::require(logits.extent(0) == B && (logits.extent(1) == L || logits.extent(1) == 1) && logits.extent(2) == vocab(),
                    fn, "logits must be (B, L, V) or (B, 1, V) with V = " + std::to_string(vocab()));
    if (state) check_cache(fn, *state, B);
    std::size_t const M = B * L;
    if (M == 0) return;
    reserve(M);
    using M_ = memory_space;
    embedding(space, embedding_params<T, Wt, M_>{view1<const std::int32_t, M_>(ids.data(), Kokkos::LayoutStride(M, 1)),
                                                  weights_.embedding, strided<T, M_>(hidden_.data(), M, E, E, 1)});
    Kokkos::deep_copy(space, residual_, 0.0f);
    tensor3<T> const hidden(hidden_.data(), B, L, E);
    tensor3<float> const residual(residual_.data(), B, L, E);
    for (std::size_t i = 0; i < blocks_.size(); ++i)
      blocks_[i].forward(space, hidden, residual, hidden, state ? &state->layers[i] : nullptr);
    if (logits.extent(1) == L) {
      head(space, strided<const T, M_>(hidden_.data(), M, E, E, 1), strided<const float, M_>(residual_.data(), M, E, E, 1),
           strided<T, M_>(logits.data(), M, vocab(), vocab(), 1));
    } else {  // the last token of each sequence: rows (b, L-1), L*E apart
      std::size_t const last = (L - 1) * E;
      head(space, strided<const T, M_>(hidden_.data() + last, B, L * E, E, 1),
           strided<const float, M_>(residual_.data() + last, B, L * E, E, 1),
           strided<T, M_>(logits.data(), B, vocab(), vocab(), 1));
    }
  }

  /// \brief Decode one token of each of B sequences (asynchronous on `space`).
  /// \param space the execution space instance.
  /// \param ids (B) the tokens. \param logits (B, V) their next-token logits.
  /// \param state the cache, advanced by one token.
  /// \param check_ids refuse ids outside the vocabulary before running, which waits for `space`;
  ///        pass false for ids chosen on the space (`argmax_rows`), so that nothing waits and the
  ///        step can be recorded in an `ssm::graph` (a bad id then gives NaN logits).
  /// \throws ssm::shape_error for wrong shapes, or ids outside the vocabulary when checking.
  void step(ExecSpace const& space, Kokkos::View<const std::int32_t*, Kokkos::LayoutRight, memory_space> const& ids,
            tensor2<T> const& logits, cache& state, bool check_ids = true) const {
    char const* fn = "ssm::mamba_lm::step";
    std::size_t const B = ids.extent(0), E = static_cast<std::size_t>(config().d_model);
    detail::require(logits.extent(0) == B && logits.extent(1) == vocab(), fn,
                    "logits must be (B, V) = " + detail::shape_string(B, vocab()));
    check_cache(fn, state, B);
    if (B == 0) return;
    reserve(B);
    using M_ = memory_space;
    embedding(space,
              embedding_params<T, Wt, M_>{ids, weights_.embedding, strided<T, M_>(hidden_.data(), B, E, E, 1), check_ids});
    tensor2<T> const hidden(hidden_.data(), B, E);
    tensor2<float> const residual(residual_.data(), B, E);
    Kokkos::deep_copy(space, residual, 0.0f);
    if (!step_at_once(space, hidden, residual, state)) step_each(space, hidden, residual, state);
    head(space, hidden, residual, logits);
  }

 private:
  /// The blocks' steps one after another: through rows of T, or through out_proj's partial sums
  /// where the space's `step_partials` asks for them (the last block still writes rows of T).
  void step_each(ExecSpace const& space, tensor2<T> const& hidden, tensor2<float> const& residual, cache& state) const {
    std::size_t const B = hidden.extent(0), E = hidden.extent(1), n = blocks_.size();
    auto const S = static_cast<std::size_t>(step_partials<ExecSpace>::template slices<T, Wt>(config().mixer(), B));
    if (S == 0 || n < 2) {
      for (std::size_t i = 0; i < n; ++i) blocks_[i].step(space, hidden, residual, hidden, state.layers[i]);
      return;
    }
    if (partials_.extent(0) < S * B * E)
      partials_ = Kokkos::View<float*, memory_space>(
          Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ssm::mamba_lm::partials")), S * B * E);
    using rows = step_rows<T, memory_space>;
    using input = step_rows<const T, memory_space>;
    typename rows::template partials_view const partials(partials_.data(), S, B, E);
    blocks_[0].step(space, input{hidden, {}}, residual, rows{{}, partials}, state.layers[0]);
    for (std::size_t i = 1; i + 1 < n; ++i)
      blocks_[i].step(space, input{{}, partials}, residual, rows{{}, partials}, state.layers[i]);
    blocks_[n - 1].step(space, input{{}, partials}, residual, rows{hidden, {}}, state.layers[n - 1]);
  }

  /// Every block's step in one go, if the space's `mamba_stack_step_backend` takes it.
  bool step_at_once(ExecSpace const& space, tensor2<T> const& hidden, tensor2<float> const& residual, cache& state) const {
    using backend = mamba_stack_step_backend<ExecSpace>;
    if constexpr (backend::fused) {
      if (!backend::takes(hidden.extent(0))) return false;  // before gathering every block's tensors
      using params = mamba_block_step_params<T, Wt, memory_space>;
      std::vector<params> layers;
      layers.reserve(blocks_.size());
      for (std::size_t i = 0; i < blocks_.size(); ++i)
        layers.push_back(blocks_[i].step_tensors(hidden, residual, hidden, state.layers[i]));
      std::span<params const> const all(layers);
      if (!backend::fuses(config().mixer(), all)) return false;
      std::size_t const words = backend::template scratch_words<T>(config().mixer());
      if (step_words_.extent(0) < words)
        step_words_ = Kokkos::View<std::uint32_t*, memory_space>("ssm::mamba_lm::step_words", words);
      backend::run(space, config().mixer(), all, step_words_.data());
      return true;
    } else {
      return false;
    }
  }

  /// logits = lm_head(RMSNorm(hidden + residual)) for M rows.
  void head(ExecSpace const& space, view2<const T, memory_space> const& hidden,
            view2<const float, memory_space> const& residual, view2<T, memory_space> const& logits) const {
    std::size_t const rows = hidden.extent(0), E = hidden.extent(1);
    rms_norm_params<T, Wt, memory_space> norm;
    norm.x = hidden;
    norm.residual = residual;
    norm.weight = weights_.norm_f;
    norm.eps = config().norm_eps;
    norm.out = strided<T, memory_space>(normed_.data(), rows, E, E, 1);
    rms_norm(space, norm);
    linear(space, linear_params<T, Wt, memory_space>{norm.out, weights_.lm_head, {}, logits});
  }

  void check_cache(char const* fn, cache const& c, std::size_t B) const {
    detail::require(c.layers.size() == blocks_.size() && c.batch() == B, fn,
                    "the cache must hold n_layer = " + std::to_string(blocks_.size()) + " states for B = " +
                        std::to_string(B) + " sequences (make it with make_cache(B))");
  }

  void reserve(std::size_t M) const {
    if (tokens_ >= M) return;
    std::size_t const E = static_cast<std::size_t>(config().d_model);
    hidden_ = Kokkos::View<T*, memory_space>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ssm::mamba_lm::hidden")), M * E);
    residual_ = Kokkos::View<float*, memory_space>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ssm::mamba_lm::residual")), M * E);
    normed_ = Kokkos::View<T*, memory_space>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ssm::mamba_lm::normed")), M * E);
    tokens_ = M;
  }

  weights_type weights_;
  std::vector<block_type> blocks_;
  mutable std::size_t tokens_ = 0;
  mutable Kokkos::View<T*, memory_space> hidden_;      // (M, E) the blocks' outputs
  mutable Kokkos::View<float*, memory_space> residual_;  // (M, E) the residual stream
  mutable Kokkos::View<T*, memory_space> normed_;      // (M, E) the final norm's output
  mutable Kokkos::View<std::uint32_t*, memory_space> step_words_;  // mamba_stack_step_backend's scratch
  mutable Kokkos::View<float*, memory_space> partials_;  // (S, B, E) out_proj's partial sums between blocks
};

}  // namespace ssm

#if defined(KOKKOS_ENABLE_CUDA)
#include <ssm/model/cuda/stack_step.cuh>
#endif
