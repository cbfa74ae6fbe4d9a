# engine/cuda: the CUDA backend (kernels in .cu files built with nvcc, the backend in C against
# the CUDA runtime and cuBLASLt), built when configure finds nvcc (--with-cuda). The engine core
# stays plain C; without CUDA nothing below is compiled and backend_cuda_create reports that.
CUDA_KERNEL_CU = \
	engine/cuda/embedding.cu engine/cuda/norm.cu engine/cuda/rope.cu \
	engine/cuda/attention.cu engine/cuda/activation.cu engine/cuda/sampling.cu \
	engine/cuda/gemv.cu
CUDA_KERNEL_OBJ = $(CUDA_KERNEL_CU:.cu=.$(OBJEXT))
EXTRA_DIST += $(CUDA_KERNEL_CU) engine/cuda/common.cuh engine/cuda/kernels.h \
	loadtest/bench_engine_gpu.sh

# sm_90 machine code plus compute_90 PTX (JIT for later GPUs). No --use_fast_math: rope needs
# precise sincosf at large angles; kernels use __expf explicitly where it is safe.
NVCC_ARCH_FLAGS = -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
AM_NVCCFLAGS = -std=c++17 -O3 $(NVCC_ARCH_FLAGS) -Xcompiler -Wall,-Wextra \
	-I$(top_srcdir) -I$(top_builddir)

AM_V_NVCC = $(am__v_NVCC_@AM_V@)
am__v_NVCC_ = $(am__v_NVCC_@AM_DEFAULT_V@)
am__v_NVCC_0 = @echo "  NVCC    " $@;
am__v_NVCC_1 =

SUFFIXES = .cu
.cu.$(OBJEXT):
	$(AM_V_NVCC)$(MKDIR_P) $(@D) && $(NVCC) $(AM_NVCCFLAGS) $(NVCCFLAGS) -c -o $@ $<

$(CUDA_KERNEL_OBJ): engine/cuda/common.cuh engine/cuda/kernels.h
CLEANFILES += $(CUDA_KERNEL_OBJ)

if HAVE_CUDA
noinst_LIBRARIES += libllmgate_engine_cuda.a
libllmgate_engine_cuda_a_SOURCES = engine/cuda/backend_cuda.c engine/cuda/backend_cuda.h \
	engine/cuda/kernels.h
libllmgate_engine_cuda_a_CPPFLAGS = $(AM_CPPFLAGS) -isystem $(CUDA_HOME)/include
libllmgate_engine_cuda_a_CFLAGS = $(AM_CFLAGS) -O2
libllmgate_engine_cuda_a_LIBADD = $(CUDA_KERNEL_OBJ)
# the CUDA backend calls back into the core (validation, bf16 conversion, rope frequencies)
ENGINE_LIBS += libllmgate_engine_cuda.a libllmgate_engine.a $(CUDA_LIBS) -lstdc++ -lm

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_cuda_kernels tests/unit/test_cuda_backend
TESTS += tests/unit/test_cuda_kernels tests/unit/test_cuda_backend
tests_unit_test_cuda_kernels_SOURCES = tests/unit/test_cuda_kernels.c
tests_unit_test_cuda_kernels_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS) -isystem $(CUDA_HOME)/include
tests_unit_test_cuda_kernels_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
tests_unit_test_cuda_backend_SOURCES = tests/unit/test_cuda_backend.c
tests_unit_test_cuda_backend_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS) -isystem $(CUDA_HOME)/include
tests_unit_test_cuda_backend_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
endif
endif
