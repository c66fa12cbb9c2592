# Build helpers shared by every module, test and benchmark.

# Warnings for our own code only (never exported to consumers).
add_library(vck_warnings INTERFACE)
target_compile_options(vck_warnings INTERFACE
    -Wall -Wextra -Werror -Wshadow -Wno-missing-field-initializers
    $<$<COMPILE_LANGUAGE:C>:-Wstrict-prototypes -Wmissing-prototypes>)

function(vck_setup_sanitizers)
    if(VCK_SANITIZER STREQUAL "thread")
        add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
        add_link_options(-fsanitize=thread)
    elseif(VCK_SANITIZER STREQUAL "address")
        # -fno-sanitize-recover: a UBSan finding aborts the test instead of printing and passing.
        add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=all
                            -fno-omit-frame-pointer)
        add_link_options(-fsanitize=address,undefined -fno-sanitize-recover=all)
    elseif(NOT VCK_SANITIZER STREQUAL "")
        message(FATAL_ERROR "VCK_SANITIZER must be empty, 'thread' or 'address'")
    endif()
endfunction()

# The environment every test runs with, so that a sanitizer finding fails the test whether it is
# run by the presets, by scripts/test.sh or by hand with ctest.
set(VCK_TSAN_SUPPRESSIONS "${PROJECT_SOURCE_DIR}/tests/tsan.supp")
set(VCK_TEST_ENV
    "TSAN_OPTIONS=halt_on_error=0:exitcode=66:second_deadlock_stack=1:suppressions=${VCK_TSAN_SUPPRESSIONS}"
    "ASAN_OPTIONS=abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
    "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")

# vck_add_module(<name> SOURCES ... [DEPENDS <module>...] [LIBS <target>...])
# Creates vcpukit_<name>, aliased vcpukit::<name>, with <name>/include as its public headers.
function(vck_add_module name)
    cmake_parse_arguments(ARG "" "" "SOURCES;DEPENDS;LIBS" ${ARGN})
    set(target vcpukit_${name})
    add_library(${target} ${ARG_SOURCES})
    add_library(vcpukit::${name} ALIAS ${target})
    set_target_properties(${target} PROPERTIES EXPORT_NAME ${name} POSITION_INDEPENDENT_CODE ON)
    target_include_directories(${target} PUBLIC
        $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
        $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/include>
        $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
    target_compile_definitions(${target} PRIVATE _GNU_SOURCE)
    foreach(dep ${ARG_DEPENDS})
        target_link_libraries(${target} PUBLIC vcpukit::${dep})
    endforeach()
    target_link_libraries(${target} PUBLIC ${ARG_LIBS} PRIVATE $<BUILD_INTERFACE:vck_warnings>)
    install(TARGETS ${target} EXPORT vcpukitTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
    install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
    set_property(GLOBAL APPEND PROPERTY VCK_MODULES ${name})
endfunction()

# Executables that benefit from jemalloc (benchmarks, the harness) link it in release builds only:
# in the sanitizer presets it would fight the sanitizers' own allocators.
function(vck_link_jemalloc target)
    if(VCK_SANITIZER STREQUAL "")
        pkg_check_modules(JEMALLOC REQUIRED IMPORTED_TARGET jemalloc)
        target_link_libraries(${target} PRIVATE PkgConfig::JEMALLOC)
    endif()
endfunction()

# vck_add_test(<ctest-name> LABEL <label> COMMAND <exe> [args...] [PASS_REGEX <re>] [TIMEOUT s])
function(vck_add_test name)
    cmake_parse_arguments(ARG "" "LABEL;PASS_REGEX;TIMEOUT" "COMMAND" ${ARGN})
    add_test(NAME ${name} COMMAND ${ARG_COMMAND})
    set_tests_properties(${name} PROPERTIES LABELS ${ARG_LABEL} ENVIRONMENT "${VCK_TEST_ENV}")
    if(ARG_PASS_REGEX)
        set_tests_properties(${name} PROPERTIES PASS_REGULAR_EXPRESSION "${ARG_PASS_REGEX}")
    endif()
    if(ARG_TIMEOUT)
        set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT})
    endif()
endfunction()

# A plain C test executable (stress tests, tools): runs in every preset, including tsan.
function(vck_add_test_executable target)
    cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
    add_executable(${target} ${ARG_SOURCES})
    target_compile_definitions(${target} PRIVATE _GNU_SOURCE)
    target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/tests/common)
    target_link_libraries(${target} PRIVATE ${ARG_LIBS} Threads::Threads vck_warnings)
endfunction()

# A criterion unit-test binary. Criterion 2.4.1 aborts before its first test under
# ThreadSanitizer (upstream issue #274), so the tsan preset does not build these at all; the
# concurrency tests are plain executables that do run there.
function(vck_add_criterion_test name)
    cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
    if(VCK_SANITIZER STREQUAL "thread")
        return()
    endif()
    if(NOT TARGET PkgConfig::CRITERION)
        pkg_check_modules(CRITERION REQUIRED IMPORTED_TARGET GLOBAL criterion)
    endif()
    string(REPLACE "." "-" target "test-${name}")
    vck_add_test_executable(${target} SOURCES ${ARG_SOURCES} LIBS ${ARG_LIBS} PkgConfig::CRITERION)
    # One worker: ctest already runs binaries in parallel, and a fork per test keeps them isolated.
    vck_add_test(${name} LABEL unit COMMAND ${target} --jobs=1 --short-filename)
endfunction()

function(vck_install_package)
    include(CMakePackageConfigHelpers)
    get_property(modules GLOBAL PROPERTY VCK_MODULES)
    set(VCK_PC_LIBS "")
    # Link order for static archives: dependents before what they depend on.
    list(REVERSE modules)
    foreach(module ${modules})
        string(APPEND VCK_PC_LIBS " -lvcpukit_${module}")
    endforeach()
    install(EXPORT vcpukitTargets NAMESPACE vcpukit:: FILE vcpukitTargets.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/vcpukit)
    configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/vcpukitConfig.cmake.in
        ${PROJECT_BINARY_DIR}/vcpukitConfig.cmake
        INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/vcpukit)
    write_basic_package_version_file(${PROJECT_BINARY_DIR}/vcpukitConfigVersion.cmake
        COMPATIBILITY SameMinorVersion)
    install(FILES ${PROJECT_BINARY_DIR}/vcpukitConfig.cmake
        ${PROJECT_BINARY_DIR}/vcpukitConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/vcpukit)
    # Relocatable: the prefix is found from the .pc file's own place, so an install under any
    # --prefix works without reconfiguring.
    file(RELATIVE_PATH VCK_PC_UP "/root/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/root")
    configure_file(${PROJECT_SOURCE_DIR}/cmake/vcpukit.pc.in ${PROJECT_BINARY_DIR}/vcpukit.pc @ONLY)
    install(FILES ${PROJECT_BINARY_DIR}/vcpukit.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endfunction()
