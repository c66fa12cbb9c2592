/* Never ends: vck-run --timeout must stop it (exit 5). */
#include "guest.h"

int main(unsigned hart, unsigned harts)
{
    (void)harts;
    if (hart == 0)
        puts_uart("spinning\n");
    for (;;)
        cpu_relax();
}
