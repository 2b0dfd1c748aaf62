#pragma once
/// \file
/// \brief Load a Mamba language model from a checkpoint directory: `config.json` and the weights.
///
/// `ssm::load_checkpoint<Wt, MemSpace>(dir)` reads `dir/config.json` (either convention, see
/// model/config_json.hpp), then the weights from the first of these that exists:
/// 1. `model.safetensors`;
/// 2. `model.safetensors.index.json` and the shards its `weight_map` names (`ssm::io::safetensors_shards`);
/// 3. `pytorch_model.bin` (PyTorch's zip format, through `ssm::io::torch_checkpoint`).
///
/// Any source of tensors with the reader's API (`ssm::tensor_source`) can be loaded with
/// `ssm::load_weights`, which does the work: it accepts both tensor-name conventions
/// (`backbone.embedding.weight` of mamba_ssm, `backbone.embeddings.weight` of transformers; the
/// layers are named alike), checks every tensor the config implies before allocating anything,
/// converts each to the storage type `Wt` (see `ssm::io::safetensors_file::read_as`), computes
/// \f$A = -\exp(A_{\log})\f$ and copies everything into the views of
/// `ssm::mamba_lm_weights<Wt, MemSpace>::allocate(config)` through host mirrors.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <Kokkos_Core.hpp>
#include <nlohmann/json.hpp>

#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/io/safetensors.hpp>
#include <ssm/io/torch_checkpoint.hpp>
#include <ssm/model/config.hpp>
#include <ssm/model/config_json.hpp>
#include <ssm/model/weights.hpp>

namespace ssm {

/// \brief The error thrown for a checkpoint whose files are missing or do not match its config.
///
/// `what()` reads: checkpoint 'PATH': PROBLEM, with PATH the checkpoint's directory (or its index
/// file) and PROBLEM naming the tensor or the file concerned. Errors of the files themselves
/// (a truncated shard, an unknown dtype) are the reader's (`ssm::io::safetensors_error`), naming the file.
class checkpoint_error : public error {
 public:
  /// \brief Build the message from the checkpoint's path and a description of the problem.
  /// \param path the checkpoint's directory or the file concerned.
  /// \param problem what is wrong, naming the tensor or file.
  checkpoint_error(std::string const& path, std::string const& problem)
      : error("checkpoint '" + path + "': " + problem) {}
};

/// \brief A callback told of the loading's progress: `progress(done, total)`, in bytes of the files'
/// tensors, first with `done` = 0, then after each tensor, last with `done` = `total`.
using load_progress = std::function<void(std::size_t done, std::size_t total)>;

/// \brief What `ssm::load_weights` needs of a source of tensors: the API of `ssm::io::safetensors_file`.
///
/// `contains(name)`, `names()`, `info(name)` with `.dtype` (a safetensors dtype string) and
/// `.shape` (a range of integers, outermost first), and `read_as<T>(name, expected_shape)` returning
/// a `std::vector<T>` of the values, row-major, for `T` = `float` and the storage type. A source may
/// also have `file_of(name)` or `path()`, which error messages then name.
/// \tparam S the type of the source.
template <class S>
concept tensor_source = requires(S const& s, std::string const& name, std::vector<std::int64_t> const& shape) {
  { s.contains(name) } -> std::convertible_to<bool>;
  { s.names() } -> std::convertible_to<std::vector<std::string>>;
  s.info(name).dtype;
  s.info(name).shape;
  { s.template read_as<float>(name, shape) } -> std::same_as<std::vector<float>>;
};

namespace detail {

/// The file a tensor of a source comes from, for messages ("" if the source cannot tell).
template <class Source>
std::string tensor_file(Source const& s, std::string const& name) {
  if constexpr (requires { s.file_of(name); }) {
    return std::filesystem::path(s.file_of(name)).string();
  } else if constexpr (requires { s.path(); }) {
    return std::filesystem::path(s.path()).string();
  } else {
    return {};
  }
}

/// Bytes of a tensor's values in its file's dtype: elements times the item size (1 if unknown).
template <class Info>
std::uint64_t tensor_bytes(Info const& info) {
  std::uint64_t n = 1;
  for (auto const d : info.shape) n *= static_cast<std::uint64_t>(d);
  std::size_t const item = io::detail::dtype_itemsize(std::string(info.dtype));
  return n * (item ? item : 1);
}

/// Copy `values` (row-major, as many as the view's elements) into a contiguous view of any memory space.
template <class View, class T>
void copy_into(View const& view, std::vector<T> const& values, std::string const& name) {
  require(values.size() == view.span() && view.span_is_contiguous(), "ssm::load_weights",
          "tensor '" + name + "' gave " + std::to_string(values.size()) + " values for " +
              std::to_string(view.span()) + " elements");
  auto const mirror = Kokkos::create_mirror_view(view);
  std::copy(values.begin(), values.end(), mirror.data());
  Kokkos::deep_copy(view, mirror);
}

/// The name of a config field in the convention the config came from (for messages).
inline std::string config_field(model_config const& c, std::string const& mamba_ssm_name,
                                std::string const& transformers_name) {
  return c.convention == "transformers" ? transformers_name : mamba_ssm_name;
}

/// "a, b, c (and 4 more)": at most `limit` names.
inline std::string name_list(std::vector<std::string> const& names, std::size_t limit = 8) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > limit) out += " (and " + std::to_string(names.size() - limit) + " more)";
  return out;
}

}  // namespace detail

/// \brief Load the weights of a Mamba language model of sizes `config` from any source of tensors.
///
/// Tensors, with D = d_inner, E = d_model, N = d_state, W = d_conv, R = dt_rank and
/// V = padded_vocab_size (the file's embedding must have exactly V rows, padding included):
/// - `backbone.embedding.weight` or `backbone.embeddings.weight` (V, E), not both;
/// - for each layer i < n_layer, `backbone.layers.{i}.norm.weight` (E) and under
///   `backbone.layers.{i}.mixer.`: `in_proj.weight` (2D, E), `in_proj.bias` (2D) iff `bias`,
///   `conv1d.weight` (D, 1, W), `conv1d.bias` (D) iff `conv_bias`, `x_proj.weight` (R + 2N, D),
///   `dt_proj.weight` (D, R), `dt_proj.bias` (D), `A_log` (D, N), `D` (D), `out_proj.weight` (E, D),
///   `out_proj.bias` (E) iff `bias`;
/// - `backbone.norm_f.weight` (E);
/// - `lm_head.weight` (V, E): required when the embeddings are not tied; when they are, it may be
///   absent, or present and then equal to the embedding (compared after conversion to `Wt`).
///
/// Other tensors are ignored, except those that contradict the config: a bias the config does not
/// have, or a layer at or beyond n_layer. The dense, conv and norm weights and the embedding are
/// converted to `Wt` by the source's `read_as<Wt>`; `D` and `dt_proj.bias` are read as fp32; `A`
/// is \f$-\exp(A_{\log})\f$, with \f$A_{\log}\f$ read as fp32 and the exponential evaluated in
/// double precision, then rounded once to fp32 (within one fp32 ulp of PyTorch's
/// `-torch.exp(A_log.float())`).
///
/// Everything is checked (presence, shape, dtype) before the weights are allocated and read.
/// \tparam Wt storage type of the dense, conv and norm weights and of the embedding: `float`,
///         `ssm::f16` or `ssm::bf16`.
/// \tparam MemSpace the Kokkos memory space of the weights (a device space works: the values go
///         through host mirrors and `Kokkos::deep_copy`).
/// \tparam Source a `ssm::tensor_source`, e.g. `ssm::io::safetensors_file`, `ssm::io::safetensors_shards`
///         or `ssm::io::torch_checkpoint`.
/// \param config the model's sizes (e.g. from `ssm::load_model_config`).
/// \param source the tensors.
/// \param where the name of the checkpoint in error messages (usually its directory).
/// \param progress optional; called with (bytes loaded, total bytes) as the tensors are read.
/// \return the weights, every view allocated and filled; `lm_head` is `embedding` when tied.
/// \throws ssm::checkpoint_error naming the tensor(s) if tensors are missing, have the wrong shape,
///         hold integers, or contradict the config; the source's errors (e.g.
///         `ssm::io::safetensors_error`, naming the file) propagate; `ssm::shape_error` if `config`
///         itself is out of range.
template <class Wt, class MemSpace = Kokkos::HostSpace, tensor_source Source>
mamba_lm_weights<Wt, MemSpace> load_weights(model_config const& config, Source const& source, std::string const& where,
                                            load_progress const& progress = {}) {
  using weights_type = mamba_lm_weights<Wt, MemSpace>;
  using shape_t = std::vector<std::int64_t>;
  using loader = std::function<void(weights_type&)>;
  struct entry {
    std::string name;
    shape_t shape;
    loader load;
    std::uint64_t bytes = 0;
  };
  auto const fail = [&where](std::string const& problem) { throw checkpoint_error(where, problem); };

  config.mixer().validate();
  detail::require(config.n_layer >= 0 && config.padded_vocab_size >= 1, "ssm::load_weights",
                  "the config needs n_layer >= 0 and padded_vocab_size >= 1");
  std::int64_t const V = config.padded_vocab_size, E = config.d_model, D = config.d_inner, N = config.d_state,
                     W = config.d_conv, R = config.dt_rank;

  std::vector<entry> entries;
  std::vector<std::string> missing;
  auto const add = [&](std::string const& name, shape_t const& shape, loader load) {
    if (!source.contains(name)) {
      missing.push_back(name);
    } else {
      entries.push_back({name, shape, std::move(load), 0});
    }
  };
  // A tensor of storage type Wt, into the view `select(w)`.
  auto const add_wt = [&](std::string const& name, shape_t const& shape, auto select) {
    add(name, shape, [&source, name, shape, select](weights_type& w) {
      detail::copy_into(select(w), source.template read_as<Wt>(name, shape), name);
    });
  };
  // An fp32 tensor, into the view `select(w)`.
  auto const add_f32 = [&](std::string const& name, shape_t const& shape, auto select) {
    add(name, shape, [&source, name, shape, select](weights_type& w) {
      detail::copy_into(select(w), source.template read_as<float>(name, shape), name);
    });
  };

  // The embedding, under either name.
  std::string const emb_mamba_ssm = "backbone.embedding.weight", emb_transformers = "backbone.embeddings.weight";
  bool const has_mamba_ssm = source.contains(emb_mamba_ssm), has_transformers = source.contains(emb_transformers);
  if (has_mamba_ssm && has_transformers) {
    fail("holds both '" + emb_mamba_ssm + "' (mamba_ssm) and '" + emb_transformers +
         "' (transformers): cannot tell which is the embedding");
  }
  if (!has_mamba_ssm && !has_transformers) {
    missing.push_back(emb_mamba_ssm + "' or '" + emb_transformers);  // quoted by name_list
  } else {
    add_wt(has_transformers ? emb_transformers : emb_mamba_ssm, {V, E},
           [](weights_type& w) -> auto& { return w.embedding; });
  }

  std::string const bias_field = detail::config_field(config, "ssm_cfg.bias", "use_bias");
  std::string const conv_bias_field = detail::config_field(config, "ssm_cfg.conv_bias", "use_conv_bias");
  for (int i = 0; i < config.n_layer; ++i) {
    std::string const p = "backbone.layers." + std::to_string(i) + ".";
    std::string const m = p + "mixer.";
    auto const mixer = [i](weights_type& w) -> auto& { return w.mixers[static_cast<std::size_t>(i)]; };
    add_wt(p + "norm.weight", {E}, [i](weights_type& w) -> auto& { return w.norms[static_cast<std::size_t>(i)]; });
    add_wt(m + "in_proj.weight", {2 * D, E}, [mixer](weights_type& w) -> auto& { return mixer(w).in_proj_weight; });
    if (config.bias) {
      add_wt(m + "in_proj.bias", {2 * D}, [mixer](weights_type& w) -> auto& { return mixer(w).in_proj_bias; });
      add_wt(m + "out_proj.bias", {E}, [mixer](weights_type& w) -> auto& { return mixer(w).out_proj_bias; });
    } else {
      for (std::string const& name : {m + "in_proj.bias", m + "out_proj.bias"}) {
        if (source.contains(name)) {
          fail("holds '" + name + "', but the config has no such biases (" + bias_field + " = false)");
        }
      }
    }
    add_wt(m + "conv1d.weight", {D, 1, W}, [mixer](weights_type& w) -> auto& { return mixer(w).conv1d_weight; });
    if (config.conv_bias) {
      add_wt(m + "conv1d.bias", {D}, [mixer](weights_type& w) -> auto& { return mixer(w).conv1d_bias; });
    } else if (source.contains(m + "conv1d.bias")) {
      fail("holds '" + m + "conv1d.bias', but the config has no conv bias (" + conv_bias_field + " = false)");
    }
    add_wt(m + "x_proj.weight", {R + 2 * N, D}, [mixer](weights_type& w) -> auto& { return mixer(w).x_proj_weight; });
    add_wt(m + "dt_proj.weight", {D, R}, [mixer](weights_type& w) -> auto& { return mixer(w).dt_proj_weight; });
    add_f32(m + "dt_proj.bias", {D}, [mixer](weights_type& w) -> auto& { return mixer(w).dt_proj_bias; });
    add(m + "A_log", {D, N}, [&source, name = m + "A_log", shape = shape_t{D, N}, mixer](weights_type& w) {
      std::vector<float> a = source.template read_as<float>(name, shape);
      for (float& x : a) x = static_cast<float>(-std::exp(static_cast<double>(x)));
      detail::copy_into(mixer(w).A, a, name);
    });
    add_f32(m + "D", {D}, [mixer](weights_type& w) -> auto& { return mixer(w).D; });
    add_wt(m + "out_proj.weight", {E, D}, [mixer](weights_type& w) -> auto& { return mixer(w).out_proj_weight; });
  }
  add_wt("backbone.norm_f.weight", {E}, [](weights_type& w) -> auto& { return w.norm_f; });

  std::string const head = "lm_head.weight";
  std::string const tie_field = detail::config_field(config, "tie_embeddings", "tie_word_embeddings");
  if (!config.tie_embeddings) {
    add_wt(head, {V, E}, [](weights_type& w) -> auto& { return w.lm_head; });
  } else if (source.contains(head)) {
    // Tied, yet stored: it must be the embedding (read after it: the entries load in order).
    add(head, {V, E}, [&source, head, where, tie_field, shape = shape_t{V, E}](weights_type& w) {
      std::vector<Wt> const values = source.template read_as<Wt>(head, shape);
      auto const embedding = Kokkos::create_mirror_view(w.embedding);
      Kokkos::deep_copy(embedding, w.embedding);
      std::size_t const cols = static_cast<std::size_t>(shape[1]);
      for (std::size_t k = 0; k < values.size(); ++k) {
        if (std::memcmp(&values[k], embedding.data() + k, sizeof(Wt)) != 0) {
          throw checkpoint_error(where, "holds '" + head + "', which differs from the embedding (first at row " +
                                            std::to_string(k / cols) + ", column " + std::to_string(k % cols) +
                                            ") although the config ties them (" + tie_field + " = true)");
        }
      }
    });
  }

  if (!missing.empty()) {
    fail("misses " + std::to_string(missing.size()) + (missing.size() == 1 ? " tensor: " : " tensors: ") +
         detail::name_list(missing));
  }

  // Layers the config does not have.
  std::string const layers = "backbone.layers.";
  for (std::string const& name : source.names()) {
    if (name.compare(0, layers.size(), layers) != 0) continue;
    std::size_t const end = name.find('.', layers.size());
    std::string const index =
        name.substr(layers.size(), end == std::string::npos ? std::string::npos : end - layers.size());
    bool const digits = std::all_of(index.begin(), index.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    if (index.empty() || index.size() > 9 || !digits) continue;
    if (std::stol(index) >= config.n_layer) {
      fail("holds '" + name + "', but the config has " + detail::config_field(config, "n_layer", "num_hidden_layers") +
           " = " + std::to_string(config.n_layer) + " (layers 0 to " + std::to_string(config.n_layer - 1) + ")");
    }
  }

  // Shapes and dtypes, before anything is allocated or read.
  std::uint64_t total = 0;
  for (entry& e : entries) {
    auto const& info = source.info(e.name);
    shape_t const shape(info.shape.begin(), info.shape.end());
    std::string const dtype(info.dtype);
    std::string const file = detail::tensor_file(source, e.name);
    std::string const in_file = file.empty() ? "" : " (in '" + file + "')";
    if (shape != e.shape) {
      fail("tensor '" + e.name + "'" + in_file + " has shape " + io::detail::shape_string(shape) +
           ", but the config needs " + io::detail::shape_string(e.shape));
    }
    bool const known = io::detail::dtype_itemsize(dtype) != 0;
    bool const real = dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64";
    if (known && !real) {
      fail("tensor '" + e.name + "'" + in_file + " has dtype " + dtype + "; weights must be F32, F16, BF16 or F64");
    }
    e.bytes = detail::tensor_bytes(info);
    total += e.bytes;
  }

  weights_type w = weights_type::allocate(config);
  std::uint64_t done = 0;
  if (progress) progress(0, static_cast<std::size_t>(total));
  for (entry const& e : entries) {
    e.load(w);
    done += e.bytes;
    if (progress) progress(static_cast<std::size_t>(done), static_cast<std::size_t>(total));
  }
  return w;
}

namespace io {

/// \brief The shards of a sharded safetensors checkpoint, as its `model.safetensors.index.json`
/// lists them: one source of tensors with the API of `ssm::io::safetensors_file`.
///
/// The index is `{"metadata": {...}, "weight_map": {"tensor name": "shard file", ...}}`. On
/// construction it is validated: a JSON object (no key twice in one object) whose `weight_map` maps
/// names to relative paths that stay inside the index's directory (no absolute path, no `..`
/// component; symbolic links are followed, as the Hugging Face cache needs), every shard exists and
/// is a valid safetensors file (mapped, not read), every listed tensor is in the shard the map
/// names, and no tensor is in two listed shards. The tensors are those of `weight_map`.
class safetensors_shards {
 public:
  /// \brief Largest index file accepted, in bytes.
  static constexpr std::uintmax_t max_index_bytes = 64u << 20;

  /// \brief Read and validate the index at `index_json` and open its shards.
  /// \param index_json the index file, e.g. `dir / "model.safetensors.index.json"`.
  /// \throws ssm::checkpoint_error naming the index file and the entry if the index is missing,
  ///         malformed or inconsistent with its shards, or a shard is missing or outside the
  ///         directory; `ssm::io::safetensors_error`, naming the shard, if a shard is malformed.
  explicit safetensors_shards(std::filesystem::path const& index_json) : path_(index_json.string()) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(index_json, ec)) fail("does not exist or is not a regular file");
    std::uintmax_t const size = std::filesystem::file_size(index_json, ec);
    if (ec) fail("cannot get the file size: " + ec.message());
    if (size > max_index_bytes) fail("is " + std::to_string(size) + " bytes, more than an index may have");
    std::ifstream in(index_json, std::ios::binary);
    if (!in) fail("cannot open the file");
    std::string text(static_cast<std::size_t>(size), '\0');
    in.read(text.data(), static_cast<std::streamsize>(size));
    if (static_cast<std::uintmax_t>(in.gcount()) != size) fail("cannot read the whole file");
    nlohmann::json const j = ssm::detail::parse_json_strictly(text, 16, [this](std::string const& p) { fail(p); });

    if (!j.is_object()) fail("the top level must be a JSON object");
    if (auto const it = j.find("metadata"); it != j.end() && !it->is_object() && !it->is_null()) {
      fail("metadata must be an object");
    }
    auto const map = j.find("weight_map");
    if (map == j.end()) fail("has no weight_map");
    if (!map->is_object()) fail("weight_map must be an object mapping tensor names to shard files");

    std::map<std::string, std::size_t> shard_number;  // shard file -> index in shards_
    std::vector<std::string> files, first_tensor;
    for (auto const& item : map->items()) {
      std::string const& name = item.key();
      if (!item.value().is_string()) fail("weight_map gives '" + name + "' a shard that is not a string");
      std::string const file = item.value().get<std::string>();
      check_shard_path(name, file);
      auto const [it, added] = shard_number.emplace(file, files.size());
      if (added) {
        files.push_back(file);
        first_tensor.push_back(name);
      }
      where_.emplace(name, it->second);
    }
    std::filesystem::path const dir = index_json.parent_path();
    for (std::size_t k = 0; k < files.size(); ++k) {
      std::filesystem::path const shard = dir / files[k];
      if (!std::filesystem::is_regular_file(shard, ec)) {
        fail("weight_map puts '" + first_tensor[k] + "' in the shard '" + files[k] + "', which does not exist");
      }
      shards_.emplace_back(shard);  // validated; a malformed shard throws safetensors_error naming it
    }
    std::map<std::string, std::size_t> holder;
    for (std::size_t k = 0; k < shards_.size(); ++k) {
      for (std::string const& name : shards_[k].names()) {
        auto const [it, added] = holder.emplace(name, k);
        if (!added) {
          fail("tensor '" + name + "' is in two shards, '" + files[it->second] + "' and '" + files[k] + "'");
        }
      }
    }
    for (auto const& [name, k] : where_) {
      if (!shards_[k].contains(name)) {
        fail("weight_map puts '" + name + "' in the shard '" + files[k] + "', which does not hold it");
      }
    }
  }

  /// \brief The index file's path, as given.
  /// \return the path, as a string.
  [[nodiscard]] std::string const& path() const noexcept { return path_; }

  /// \brief Whether `weight_map` lists a tensor of this name.
  /// \param name tensor name.
  /// \return true if `name` is one of `names()`.
  [[nodiscard]] bool contains(std::string const& name) const { return where_.count(name) != 0; }

  /// \brief The names of all tensors of `weight_map`, sorted.
  /// \return a new vector of the names.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(where_.size());
    for (auto const& entry : where_) out.push_back(entry.first);
    return out;
  }

  /// \brief The shard holding a tensor.
  /// \param name tensor name.
  /// \return the shard's path, as a string.
  /// \throws ssm::checkpoint_error if `weight_map` has no such tensor.
  [[nodiscard]] std::string const& file_of(std::string const& name) const { return shard_of(name).path(); }

  /// \brief Dtype, shape and byte range (within its shard) of a tensor.
  /// \param name tensor name.
  /// \return its entry, valid as long as this object lives.
  /// \throws ssm::checkpoint_error if `weight_map` has no such tensor.
  [[nodiscard]] tensor_info const& info(std::string const& name) const { return shard_of(name).info(name); }

  /// \brief Read a tensor from its shard, converted to `T` (see `ssm::io::safetensors_file::read_as`).
  /// \tparam T destination element type.
  /// \param name tensor name.
  /// \param expected_shape if not empty, the shape the tensor must have.
  /// \return `info(name).numel()` values of type `T`, row-major.
  /// \throws ssm::checkpoint_error if `weight_map` has no such tensor; `ssm::io::safetensors_error`,
  ///         naming the shard, if the shape differs or the conversion is not supported.
  template <class T>
  [[nodiscard]] std::vector<T> read_as(std::string const& name,
                                       std::vector<std::int64_t> const& expected_shape = {}) const {
    return shard_of(name).template read_as<T>(name, expected_shape);
  }

  /// \brief The shards, in the order of their first mention in `weight_map` (sorted by tensor name).
  /// \return the opened files.
  [[nodiscard]] std::vector<safetensors_file> const& shards() const noexcept { return shards_; }

 private:
  std::string path_;
  std::vector<safetensors_file> shards_;
  std::map<std::string, std::size_t> where_;  // tensor name -> index in shards_

  [[noreturn]] void fail(std::string const& problem) const { throw checkpoint_error(path_, problem); }

  safetensors_file const& shard_of(std::string const& name) const {
    auto const it = where_.find(name);
    if (it == where_.end()) fail("weight_map has no tensor named '" + name + "'");
    return shards_[it->second];
  }

  // A shard's path must be relative and stay in the index's directory (lexically: links are allowed).
  void check_shard_path(std::string const& name, std::string const& file) const {
    std::string const where = "weight_map puts '" + name + "' in '" + file + "'";
    if (file.empty()) fail("weight_map gives '" + name + "' an empty shard name");
    if (file.find('\0') != std::string::npos) fail(where + ", a name with a NUL character");
    std::filesystem::path const p(file);
    if (p.has_root_name() || p.has_root_directory()) {
      fail(where + ", an absolute path: shards must be inside the checkpoint's directory");
    }
    for (auto const& part : p) {
      if (part == "..") fail(where + ", a path with '..' that may leave the checkpoint's directory");
    }
  }
};

}  // namespace io

/// \brief Load a Mamba language model's checkpoint: its `config.json` and its weights.
///
/// The weights come from the first of `model.safetensors`, `model.safetensors.index.json` (with
/// its shards) and `pytorch_model.bin` that `dir` holds; see `ssm::load_weights` for the tensors,
/// the conversions and the checks.
/// \tparam Wt storage type of the dense, conv and norm weights and of the embedding: `float`,
///         `ssm::f16` or `ssm::bf16` (`A`, `D` and `dt_proj.bias` are always fp32).
/// \tparam MemSpace the Kokkos memory space of the weights; may be a device space.
/// \param dir the checkpoint's directory.
/// \param progress optional; called with (bytes loaded, total bytes) as the tensors are read.
/// \return the weights, with `config` the parsed config.
/// \throws ssm::config_error if `config.json` is missing or refused; ssm::checkpoint_error if `dir`
///         is not a directory, holds no weights file, its index is invalid, or its tensors do not
///         match the config (naming the tensor); the reader's errors (`ssm::io::safetensors_error`,
///         naming the file; `ssm::io::torch_checkpoint_error` for `pytorch_model.bin`) for malformed
///         or truncated files.
template <class Wt, class MemSpace = Kokkos::HostSpace>
mamba_lm_weights<Wt, MemSpace> load_checkpoint(std::filesystem::path const& dir,
                                               std::function<void(std::size_t done, std::size_t total)> progress = {}) {
  namespace fs = std::filesystem;
  std::string const where = dir.string();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw checkpoint_error(where, "does not exist or is not a directory");
  model_config const config = load_model_config(dir / "config.json");
  if (fs::exists(dir / "model.safetensors", ec)) {
    io::safetensors_file const file(dir / "model.safetensors");
    return load_weights<Wt, MemSpace>(config, file, where, progress);
  }
  if (fs::exists(dir / "model.safetensors.index.json", ec)) {
    io::safetensors_shards const shards(dir / "model.safetensors.index.json");
    return load_weights<Wt, MemSpace>(config, shards, where, progress);
  }
  if (fs::exists(dir / "pytorch_model.bin", ec)) {
    io::torch_checkpoint const file(dir / "pytorch_model.bin");
    return load_weights<Wt, MemSpace>(config, file, where, progress);
  }
  throw checkpoint_error(where, "holds no weights: none of model.safetensors, model.safetensors.index.json, "
                                "pytorch_model.bin");
}

}  // namespace ssm
