#!/usr/bin/env bash
# Builds the libFuzzer targets out of tree with clang-14 (-fsanitize=fuzzer,address,undefined) and
# runs each for a bounded time on its committed seed corpus (fuzz/corpus/<target>/, copied so the
# repository is not written). Fails on any crash, leak or sanitizer report; the reproducer is kept
# in the build directory. Env: AXEQ_FUZZ_SECONDS (default 60 per target), AXEQ_FUZZ_BUILD
# (default /tmp/axeq-fuzz), AXEQ_FUZZ_TARGETS (default "wire safetensors result").
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
out="${AXEQ_FUZZ_BUILD:-/tmp/axeq-fuzz}"
secs="${AXEQ_FUZZ_SECONDS:-60}"
targets="${AXEQ_FUZZ_TARGETS:-wire safetensors result}"
CXX="${CXX_FUZZ:-clang++-14}"
command -v "$CXX" >/dev/null || { echo "fuzz/run.sh: $CXX not found (apt-get install clang-14 libclang-rt-14-dev)"; exit 2; }
mkdir -p "$out/gen" "$out/obj"
protoc -I"$src/proto" --cpp_out="$out/gen" "$src/proto/axeq/v1/axeq.proto"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
flags="-std=c++17 -O1 -g $san -fsanitize=fuzzer-no-link -I$src -I$out/gen -I/usr/include/eigen3 -DNDEBUG"
# Objects shared by the targets (recompiled only when the source is newer).
compile() {  # compile SRC OBJ
  if [ ! -f "$2" ] || [ "$1" -nt "$2" ]; then $CXX $flags -c "$1" -o "$2"; fi
}
core_srcs="core/quantizer.cc core/certificate.cc core/bounds.cc"
formats_srcs="formats/safetensors.cc formats/certificate_json.cc formats/result_file.cc"
wire_srcs="proto/upload.cc proto/result.cc proto/convert.cc core/options.cc"
objs() { for s in "$@"; do echo "$out/obj/$(echo "$s" | tr / _).o"; done; }
# clang-14 cannot capture a structured binding in a lambda (C++20, clang >= 16), which
# formats/safetensors.cc does: compile a copy with the binding spelled out (reported upstream).
fixup() {  # fixup SRC -> path to compile
  if grep -q 'for (auto& \[name, v\] : j.items())' "$src/$1"; then
    local copy="$out/gen/$(echo "$1" | tr / _)"
    sed 's/for (auto& \[name, v\] : j.items()) {/for (auto\& item_ : j.items()) { const std::string name = item_.key(); auto\& v = item_.value();/' \
      "$src/$1" > "$copy.new"
    cmp -s "$copy.new" "$copy" 2>/dev/null && rm "$copy.new" || mv "$copy.new" "$copy"
    echo "$copy"
  else
    echo "$src/$1"
  fi
}
for s in $core_srcs $formats_srcs $wire_srcs; do compile "$(fixup "$s")" "$(objs "$s")"; done
compile "$out/gen/axeq/v1/axeq.pb.cc" "$out/obj/axeq.pb.o"
absl_libs="-labsl_status -labsl_statusor -labsl_strings -labsl_str_format_internal -labsl_cord -labsl_cordz_info -labsl_cord_internal -labsl_cordz_functions -labsl_cordz_handle -labsl_hash -labsl_raw_hash_set -labsl_synchronization -labsl_time -labsl_int128 -labsl_throw_delegate -labsl_raw_logging_internal -labsl_base -labsl_spinlock_wait -labsl_strings_internal -labsl_stacktrace -labsl_symbolize -labsl_bad_optional_access -labsl_bad_variant_access"
link() {  # link NAME OBJS... LIBS
  local name=$1; shift
  $CXX $flags -fsanitize=fuzzer "$src/fuzz/${name}_fuzz.cc" "$@" -o "$out/${name}_fuzz"
}
for t in $targets; do
  case $t in
    wire) link wire $(objs $wire_srcs $core_srcs) "$out/obj/axeq.pb.o" $(pkg-config --libs grpc++ protobuf) $absl_libs -lcrypto ;;
    safetensors|result) link "$t" $(objs $formats_srcs $core_srcs) $absl_libs -lcrypto ;;
    *) echo "unknown target $t"; exit 2 ;;
  esac
done
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1"
export LSAN_OPTIONS="suppressions=$src/tests/lsan.supp"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
for t in $targets; do
  work="$out/corpus-$t"
  mkdir -p "$work"
  cp -n "$src/fuzz/corpus/$t/"* "$work/" 2>/dev/null || true
  echo "== $t: ${secs}s"
  if ! (cd "$out" && "./${t}_fuzz" -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 \
          -print_final_stats=1 -artifact_prefix="$out/$t-" "$work" > "$out/$t.log" 2>&1); then
    echo "== $t: CRASH (log $out/$t.log, reproducer $out/$t-*)"; tail -40 "$out/$t.log"; status=1
  fi
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$out/$t.log" | tail -2 || true
done
exit $status
