# ONNX Runtime's C/C++ headers without installing anything: Debian's libonnxruntime-dev (suite
# trixie; its headers are upstream's, unpatched) is downloaded with `apt-get download` through a
# private apt configuration and unpacked with `dpkg -x` into the build tree.
#
# The private configuration has its own sources file (suite trixie, the archive URI read from this
# machine's own deb822 `debian.sources` in apt's sources directory), its own lists and cache
# folders, and no dpkg status: the system's apt state is not touched and no mirror host is written
# into the repository. The pinned version is taken when the archive still has it, otherwise the
# current one (with a message).
#
# Sets CTRT_ORT_HEADERS (the folder holding onnxruntime_cxx_api.h).

function(ctrt_fetch_onnxruntime_headers out_var)
  set(root "${CMAKE_BINARY_DIR}/_deps/onnxruntime-headers")
  set(include_dir "${root}/usr/include/onnxruntime")
  if(EXISTS "${include_dir}/onnxruntime_cxx_api.h")
    set(${out_var} "${include_dir}" PARENT_SCOPE)
    return()
  endif()
  find_program(APT_GET apt-get)
  find_program(APT_CONFIG apt-config)
  find_program(DPKG dpkg)
  if(NOT APT_GET OR NOT APT_CONFIG OR NOT DPKG)
    message(FATAL_ERROR "ctrt: apt-get and dpkg are needed to fetch ONNX Runtime's headers; "
                        "or point -DCTRT_ORT_INCLUDE_DIR=<folder with onnxruntime_cxx_api.h> at installed ones")
  endif()
  # apt's own sources directory (Dir::Etc::sourceparts), then the main archive's URI in debian.sources
  execute_process(COMMAND "${APT_CONFIG}" shell PARTS Dir::Etc::sourceparts/d
                  OUTPUT_VARIABLE parts_shell OUTPUT_STRIP_TRAILING_WHITESPACE)
  string(REGEX REPLACE "^PARTS='(.*)'$" "\\1" parts_dir "${parts_shell}")
  set(sources "${parts_dir}/debian.sources")
  if(NOT EXISTS "${sources}")
    message(FATAL_ERROR "ctrt: ${sources} is missing, so the Debian archive's address is unknown; "
                        "pass -DCTRT_ORT_INCLUDE_DIR=<folder with onnxruntime_cxx_api.h>")
  endif()
  # deb822 stanzas are separated by blank lines; take the URI of the first whose suites are not
  # *-security
  file(STRINGS "${sources}" lines)
  list(APPEND lines "")
  set(uri "")
  set(stanza_uri "")
  set(stanza_security FALSE)
  foreach(line IN LISTS lines)
    if(line MATCHES "^URIs:[ \t]*([^ \t]+)")
      set(stanza_uri "${CMAKE_MATCH_1}")
    elseif(line MATCHES "^Suites:.*-security")
      set(stanza_security TRUE)
    elseif(line MATCHES "^[ \t]*$")
      if(stanza_uri AND NOT stanza_security AND uri STREQUAL "")
        set(uri "${stanza_uri}")
      endif()
      set(stanza_uri "")
      set(stanza_security FALSE)
    endif()
  endforeach()
  if(uri STREQUAL "")
    message(FATAL_ERROR "ctrt: no archive URI found in ${sources}; pass -DCTRT_ORT_INCLUDE_DIR=...")
  endif()
  set(apt_root "${CMAKE_BINARY_DIR}/_deps/onnxruntime-apt")
  file(MAKE_DIRECTORY "${apt_root}/lists/partial" "${apt_root}/cache/archives/partial" "${apt_root}/deb")
  file(WRITE "${apt_root}/trixie.sources"
       "Types: deb\nURIs: ${uri}\nSuites: trixie\nComponents: main\n"
       "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
  set(apt_options
      -o "Dir::Etc::sourcelist=${apt_root}/trixie.sources" -o "Dir::Etc::sourceparts=-"
      -o "Dir::Etc::preferences=/dev/null" -o "Dir::Etc::preferencesparts=-"
      -o "Dir::State::Lists=${apt_root}/lists" -o "Dir::Cache=${apt_root}/cache"
      -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root" -qq)
  message(STATUS "ctrt: fetching libonnxruntime-dev headers (Debian trixie) into ${root}")
  execute_process(COMMAND "${APT_GET}" ${apt_options} update
                  RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "ctrt: apt-get update (private lists, suite trixie) failed: ${err}\n"
                        "Pass -DCTRT_ORT_INCLUDE_DIR=<folder with onnxruntime_cxx_api.h> instead.")
  endif()
  file(GLOB stale "${apt_root}/deb/*.deb")
  if(stale)
    file(REMOVE ${stale})
  endif()
  execute_process(COMMAND "${APT_GET}" ${apt_options} download "libonnxruntime-dev=${CTRT_ORT_DEB_VERSION}"
                  WORKING_DIRECTORY "${apt_root}/deb" RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET)
  if(NOT rc EQUAL 0)
    message(WARNING "ctrt: libonnxruntime-dev ${CTRT_ORT_DEB_VERSION} is no longer in the archive "
                    "(${err}); taking the current version")
    execute_process(COMMAND "${APT_GET}" ${apt_options} download libonnxruntime-dev
                    WORKING_DIRECTORY "${apt_root}/deb" RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "ctrt: apt-get download libonnxruntime-dev failed: ${err}")
    endif()
  endif()
  file(GLOB debs "${apt_root}/deb/libonnxruntime-dev_*.deb")
  execute_process(COMMAND "${DPKG}" -x ${debs} "${root}" RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT EXISTS "${include_dir}/onnxruntime_cxx_api.h")
    message(FATAL_ERROR "ctrt: dpkg -x ${debs} did not give onnxruntime_cxx_api.h: ${err}")
  endif()
  get_filename_component(deb_name "${debs}" NAME)
  message(STATUS "ctrt: ONNX Runtime headers from ${deb_name}")
  set(${out_var} "${include_dir}" PARENT_SCOPE)
endfunction()

# The wheel's versioned library that ctest's tests load (their CTRT_ONNXRUNTIME_LIBRARY; nothing
# built records it): CTRT_ONNXRUNTIME_LIBRARY, else the active venv's (VIRTUAL_ENV), else the
# one of the Python interpreter cmake finds.
function(ctrt_find_onnxruntime_library out_var)
  if(CTRT_ONNXRUNTIME_LIBRARY)
    set(${out_var} "${CTRT_ONNXRUNTIME_LIBRARY}" PARENT_SCOPE)
    return()
  endif()
  set(found "")
  if(DEFINED ENV{VIRTUAL_ENV})
    file(GLOB found "$ENV{VIRTUAL_ENV}/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*")
  endif()
  if(NOT found AND Python3_EXECUTABLE)
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" -c
              "import glob, os, onnxruntime; print(';'.join(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.*'))))"
      OUTPUT_VARIABLE found OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  endif()
  if(found)
    list(GET found 0 library)
    set(${out_var} "${library}" PARENT_SCOPE)
  else()
    message(WARNING "ctrt: no onnxruntime wheel found for the tests (activate the project's venv, "
                    "or pass -DCTRT_ONNXRUNTIME_LIBRARY=...)")
    set(${out_var} "" PARENT_SCOPE)
  endif()
endfunction()
