# ngx_http_llm_module: engine library, nginx module, tools and tests.
#   make            build everything under build/
#   make test       unit tests + Test::Nginx suite (+ end-to-end client tests)
#   make deps       install what the build and tests need (Debian 12)
#   make run        serve the default model on http://127.0.0.1:8000
# Variables: CUDA=auto|0|1, NGINX_SRC=<nginx source tree>, BUILD=<dir>,
#            SAN=address,undefined | thread (sanitizer build, use its own BUILD)

BUILD     ?= build
CUDA      ?= auto
NGINX_SRC ?= /usr/share/nginx/src
CC        ?= cc
NVCC      ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
OPT       ?= -O2
SAN       ?=

ifeq ($(CUDA),auto)
  ifneq ($(NVCC),)
    USE_CUDA := 1
  else
    USE_CUDA := 0
  endif
else ifeq ($(CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but nvcc was not found (PATH or /usr/local/cuda/bin); install the CUDA toolkit or build with CUDA=0)
  endif
  USE_CUDA := 1
else
  USE_CUDA := 0
endif

# -Wpointer-arith: GCC otherwise accepts arithmetic on void * (byte
# offsets) silently -- the KV pool is addressed through void * pointers
WARN    = -Wall -Wextra -Wpointer-arith -Werror
CFLAGS_ALL = -std=c11 -D_GNU_SOURCE $(OPT) -g -fPIC -pthread $(WARN) \
             -I/usr/include/cjson -Isrc $(if $(SAN),-fsanitize=$(SAN) -fno-omit-frame-pointer)
LIBS    = -lcjson -lpcre2-8 -lutf8proc -lm -lpthread
LDFLAGS_ALL = -pthread $(if $(SAN),-fsanitize=$(SAN))

ifeq ($(USE_CUDA),1)
  CFLAGS_ALL += -DLLM_HAVE_CUDA
  LIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ -ldl -lrt
  NVCCFLAGS ?= -O3 -std=c++17 -Xcompiler -fPIC -Isrc \
     -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 \
     -Xcompiler -Wall,-Wextra -Werror all-warnings
endif

ENGINE_SRCS := $(filter-out src/ngx_%.c,$(wildcard src/*.c))
ENGINE_OBJS := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(ENGINE_SRCS))
CUDA_SRCS   := $(if $(filter 1,$(USE_CUDA)),$(wildcard kernels/*.cu))
CUDA_OBJS   := $(patsubst kernels/%.cu,$(BUILD)/cuda/%.o,$(CUDA_SRCS))
LIB         := $(BUILD)/libllm.a

TOOL_SRCS := $(wildcard tools/*.c)
TOOLS     := $(patsubst tools/%.c,$(BUILD)/bin/%,$(TOOL_SRCS))
UNIT_SRCS := $(wildcard t/unit/test_*.c)
UNITS     := $(patsubst t/unit/%.c,$(BUILD)/t/%,$(UNIT_SRCS))
MODULE    := $(BUILD)/nginx/objs/ngx_http_llm_module.so

.PHONY: all lib module tools units test unit-test nginx-test e2e-test deps run clean \
        bench bench-report fuzz sanitize
all: lib tools units module

lib: $(LIB)
tools: $(TOOLS)
units: $(UNITS)
module: $(MODULE)

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/cuda/%.o: kernels/%.cu $(wildcard kernels/*.h kernels/*.cuh src/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(LIB): $(ENGINE_OBJS) $(CUDA_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/bin/%: tools/%.c $(wildcard tools/*.h) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $< -o $@ $(LIB) $(LDFLAGS_ALL) $(LIBS)

$(BUILD)/t/%: t/unit/%.c t/unit/unit.h $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -It/unit $< -o $@ $(LIB) $(LDFLAGS_ALL) $(LIBS)

$(BUILD)/bin/llm-serve-bench: LIBS += -lcurl
$(BUILD)/bin/llm-soak: LIBS += -lcurl

# The module goes through nginx's own build system.  The source tree is
# copied once and configured with --with-compat so that the distribution's
# nginx binary of the same version loads the module.
NGX_TREE := $(BUILD)/nginx
NGX_CC_OPT := -Wextra -Wno-unused-parameter -Werror $(if $(SAN),-fsanitize=$(SAN) -fno-omit-frame-pointer) -I/usr/include/cjson
NGX_LD_OPT := $(if $(SAN),-fsanitize=$(SAN))

# nginx's configure lists the module's sources: run it again when the set
# of src/ngx_* files changes (the list file changes only then).
NGX_FILES := $(sort $(wildcard src/ngx_*.c src/ngx_*.h))
NGX_LIST  := $(BUILD)/nginx-sources.txt
$(shell mkdir -p $(BUILD) && (echo "$(NGX_FILES)" | cmp -s - $(NGX_LIST) || echo "$(NGX_FILES)" > $(NGX_LIST)))

$(NGX_TREE)/objs/Makefile: config $(NGX_LIST)
	@test -x $(NGINX_SRC)/configure || test -x $(NGINX_SRC)/auto/configure || \
	  { echo "no nginx source tree at $(NGINX_SRC): run 'make deps' (Debian's nginx-dev) or set NGINX_SRC=" >&2; exit 1; }
	rm -rf $(NGX_TREE) && mkdir -p $(NGX_TREE)
	cp -a $(NGINX_SRC)/. $(NGX_TREE)/
	test -x $(NGX_TREE)/configure || cp $(NGX_TREE)/auto/configure $(NGX_TREE)/configure
	cd $(NGX_TREE) && LLM_LIB="$(abspath $(LIB))" LLM_LIBS="$(LIBS) $(NGX_LD_OPT)" \
	  ./configure --with-compat --with-threads --with-http_v2_module \
	  --with-cc-opt="$(NGX_CC_OPT)" --with-ld-opt="$(NGX_LD_OPT)" \
	  --add-dynamic-module=$(CURDIR) > configure.log 2>&1 || \
	  { tail -20 configure.log; exit 1; }

$(MODULE): $(NGX_TREE)/objs/Makefile $(LIB) ngx_http_llm_module.c $(wildcard src/ngx_*.c src/ngx_*.h) src/llm.h
	@# nginx's objs/Makefile does not know libllm.a: drop the .so so that an
	@# engine change relinks it (the objects stay, only the link reruns)
	rm -f $@
	$(MAKE) -C $(NGX_TREE) -f objs/Makefile modules
	@touch $@

# ---- tests ---------------------------------------------------------------
TEST_NGINX_BINARY ?= $(shell command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
export TEST_NGINX_BINARY

test: all
	@tools/run-tests.sh "$(BUILD)"

unit-test: units
	@t/unit/run.sh "$(BUILD)/t"

# One .t file: make nginx-test T=t/110-chat.t
T ?= t/
nginx-test: module
	@TEST_NGINX_LOAD_MODULES="$(abspath $(MODULE))" \
	 TEST_NGINX_MODEL_DIR="$(abspath t/fixtures/tiny-qwen3)" LLM_BUILD_DIR="$(abspath $(BUILD))" \
	 prove $$(perl -MTest::Nginx::Socket -e1 2>/dev/null || echo -I t/lib) -r $(T)

deps:
	@tools/deps.sh

MODEL ?= t/fixtures/tiny-qwen3
DEVICE ?= cpu
PORT ?= 8000
run: deps all
	@tools/run-server.sh "$(abspath $(MODULE))" "$(abspath $(MODEL))" "$(DEVICE)" "$(PORT)"

fuzz:
	@tools/fuzz.sh

sanitize:
	@tools/sanitize.sh

bench: all
	@tools/bench.sh "$(BUILD)"

bench-report:
	@tools/bench-report.sh

# The soak test (issue #9): make soak [SOAK_SECONDS=300]; see tools/soak.sh
.PHONY: soak
SOAK_SECONDS ?= 300
soak: module $(BUILD)/bin/llm-soak
	@SOAK_SECONDS=$(SOAK_SECONDS) tools/soak.sh "$(BUILD)"

clean:
	rm -rf $(BUILD) t/servroot*
