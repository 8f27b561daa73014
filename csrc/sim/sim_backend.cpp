// sim_backend.cpp - the sim backend: the cuda backend's own source, compiled by the host compiler against
// csrc/sim/cudasim.h. Needs -fno-strict-aliasing (the kernels type-pun uint4 / half words).
#ifndef INNERQ_SIM
#define INNERQ_SIM 1
#endif
#include "../cuda/device_backend.cu"
