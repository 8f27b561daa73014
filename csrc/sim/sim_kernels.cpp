// sim_kernels.cpp - the kernel instantiation units (kernels/*.cu), compiled by the host compiler for the sim.
#ifndef INNERQ_SIM
#define INNERQ_SIM 1
#endif
#include "../../kernels/attention_scores.cu"
#include "../../kernels/attention_values.cu"
#include "../../kernels/quantize.cu"
