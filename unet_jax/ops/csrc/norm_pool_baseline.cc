// norm_pool_kernels.h for any x86-64 (SSE2) or other CPU: the fallback of norm_pool.cc.
#define UNET_ISA baseline
#include "norm_pool_kernels.h"
