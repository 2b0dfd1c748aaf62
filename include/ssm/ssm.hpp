#pragma once
/// \file
/// \brief The umbrella header of `ssm`: every public component.
///

#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/graph.hpp>
#include <ssm/core/math.hpp>
#include <ssm/core/views.hpp>

#include <ssm/discretize/discretize.hpp>

#include <ssm/scan/selective_scan.hpp>
#include <ssm/scan/state_update.hpp>

#include <ssm/conv/causal_conv1d.hpp>

#include <ssm/norm/rms_norm.hpp>

#include <ssm/linear/eigen.hpp>
#include <ssm/linear/embedding.hpp>
#include <ssm/linear/host_gemv.hpp>
#include <ssm/linear/linear.hpp>

#include <ssm/blocks/mamba.hpp>

#include <ssm/io/safetensors.hpp>
#include <ssm/io/safetensors_writer.hpp>
#include <ssm/io/torch_checkpoint.hpp>

#include <ssm/model/checkpoint.hpp>
#include <ssm/model/config.hpp>
#include <ssm/model/config_json.hpp>
#include <ssm/model/generate.hpp>
#include <ssm/model/mamba_lm.hpp>
#include <ssm/model/presets.hpp>
#include <ssm/model/sampling.hpp>
#include <ssm/model/save.hpp>
#include <ssm/model/scoring.hpp>
#include <ssm/model/weights.hpp>

#include <ssm/text/tokenizer.hpp>
#include <ssm/text/utf8.hpp>
