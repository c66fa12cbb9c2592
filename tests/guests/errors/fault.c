/* Jumps to unmapped memory with no trap handler: vck-run must stop with exit 4 and a message
 * naming the pc, the cause and mtval. */
#include "guest.h"

int main(unsigned hart, unsigned harts)
{
    (void)harts;
    if (hart == 0)
        as_code((const void *)0x1000000ul)();
    return 0;
}
