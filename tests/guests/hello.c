/* Hello on the UART from hart 0; the other harts check in and park. */
#include "guest.h"

int main(unsigned hart, unsigned harts)
{
    if (hart != 0)
        return 0;
    puts_uart("Hello from a vcpukit guest: hart 0 of ");
    print_u64(harts);
    puts_uart("\n");
    return 0;
}
