# cmake -DVCK_RUN=<vck-run> -DQEMU=<qemu-system-riscv64> -DELF=<prog.elf> -P qemu_diff.cmake
# Runs a single-hart guest program on QEMU's virt board and on vck-run; passes when both exit 0
# and print exactly the same on the UART.
cmake_minimum_required(VERSION 3.25)
if(NOT QEMU OR QEMU MATCHES "NOTFOUND$" OR NOT EXISTS "${QEMU}")
    message(FATAL_ERROR "qemu-system-riscv64 was not found when the build was configured: it is "
                        "a dependency of the tests (scripts/deps.sh installs qemu-system-misc); "
                        "install it and configure again")
endif()
execute_process(
    COMMAND ${QEMU} -machine virt -bios none -nographic -m 128M -smp 1 -kernel ${ELF}
    RESULT_VARIABLE qemu_rc OUTPUT_VARIABLE qemu_out ERROR_VARIABLE qemu_err
    INPUT_FILE /dev/null TIMEOUT 60)
execute_process(
    COMMAND ${VCK_RUN} --smp 1 --timeout 60 ${ELF}
    RESULT_VARIABLE vck_rc OUTPUT_VARIABLE vck_out ERROR_VARIABLE vck_err
    INPUT_FILE /dev/null TIMEOUT 100)

set(problems "")
if(NOT qemu_rc STREQUAL "0")
    string(APPEND problems "QEMU: exit status ${qemu_rc}\n")
endif()
if(NOT vck_rc STREQUAL "0")
    string(APPEND problems "vck-run: exit status ${vck_rc}\n")
endif()
if(NOT qemu_out STREQUAL vck_out)
    # Name the first line that differs.
    string(REPLACE "\n" ";" qemu_lines "${qemu_out}")
    string(REPLACE "\n" ";" vck_lines "${vck_out}")
    list(LENGTH qemu_lines nq)
    list(LENGTH vck_lines nv)
    set(i 0)
    while(i LESS nq AND i LESS nv)
        list(GET qemu_lines ${i} ql)
        list(GET vck_lines ${i} vl)
        if(NOT ql STREQUAL vl)
            break()
        endif()
        math(EXPR i "${i} + 1")
    endwhile()
    math(EXPR line "${i} + 1")
    string(APPEND problems "UART output differs from line ${line} on\n")
endif()
get_filename_component(name ${ELF} NAME)
if(problems)
    message(NOTICE "--- QEMU stdout:\n${qemu_out}--- QEMU stderr:\n${qemu_err}"
                   "--- vck-run stdout:\n${vck_out}--- vck-run stderr:\n${vck_err}---")
    message(FATAL_ERROR "${name}:\n${problems}")
endif()
string(LENGTH "${vck_out}" bytes)
message(STATUS "${name}: identical UART output on QEMU and vck-run (${bytes} bytes), both exit 0")
