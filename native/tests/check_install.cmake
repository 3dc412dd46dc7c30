# ctest's install_package: install the build into WORK_DIR/prefix; check that the library
# exports only the C API and records no path of this machine; build the C example against the
# installed package through pkg-config and through find_package(ctrt) in a C-only project (so no
# C++ dependency may be asked for) and run both on ENGINE.
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN} failed (${rc}): ${out}${err}")
  endif()
  message("${out}")
  set(output "${out}" PARENT_SCOPE)
endfunction()

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
file(GLOB library "${prefix}/lib*/libctrt.so")
file(GLOB headers RELATIVE "${prefix}/include" "${prefix}/include/*/*")
if(NOT headers STREQUAL "ctrt/ctrt.h")
  message(FATAL_ERROR "installed headers are '${headers}', expected only ctrt/ctrt.h")
endif()

run(nm -D --defined-only ${library})
string(REGEX MATCHALL "[^\n]+" symbols "${output}")
foreach(line IN LISTS symbols)
  if(NOT line MATCHES " ctrt_[a-z_0-9]+$")
    message(FATAL_ERROR "libctrt.so exports more than the C API: ${line}")
  endif()
endforeach()

run(readelf -d ${library})
if(output MATCHES "RPATH|RUNPATH")
  message(FATAL_ERROR "the installed libctrt.so records a library search path:\n${output}")
endif()
file(STRINGS ${library} build_paths REGEX "${SOURCE_DIR}")
if(build_paths)
  message(FATAL_ERROR "the installed libctrt.so records paths of this checkout: ${build_paths}")
endif()

# pkg-config, then the C compiler alone
set(ENV{PKG_CONFIG_PATH} "${prefix}/lib/pkgconfig")
run(pkg-config --cflags --libs ctrt)
separate_arguments(flags UNIX_COMMAND "${output}")
run(${C_COMPILER} -std=c99 ${EXAMPLE} ${flags} -Wl,-rpath,${prefix}/lib -o ${WORK_DIR}/pkg_config_example)
run(${WORK_DIR}/pkg_config_example ${ENGINE})

# find_package in a C-only project
run(${CMAKE_COMMAND} -S ${CONSUMER} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${prefix})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer ${ENGINE})
