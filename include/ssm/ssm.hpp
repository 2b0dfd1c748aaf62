#pragma once
/// \file
/// \brief The umbrella header of `ssm`: every public component.
///
/// \mainpage ssm: state-space-model layers on Kokkos
/// `ssm` is a header-only C++20 library of the layers of Mamba and related state-space models,
/// written once as templates over a Kokkos execution space. See the README for an overview and
/// `docs/` for the guides.

#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/math.hpp>
#include <ssm/core/views.hpp>

#include <ssm/discretize/discretize.hpp>

#include <ssm/scan/selective_scan.hpp>
#include <ssm/scan/state_update.hpp>

#include <ssm/conv/causal_conv1d.hpp>

#include <ssm/norm/rms_norm.hpp>

#include <ssm/linear/eigen.hpp>
#include <ssm/linear/linear.hpp>

#include <ssm/blocks/mamba.hpp>
