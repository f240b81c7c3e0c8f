// norm_pool_kernels.h for CPUs with AVX-512 (BW/VL/DQ): chosen at run time by norm_pool.cc.
#include <omp.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2")
#define UNET_ISA avx512
#include "norm_pool_kernels.h"
