/* Reports failure 7 through the test finisher: vck-run must exit 7 and say so. */
#include "guest.h"

int main(unsigned hart, unsigned harts)
{
    (void)harts;
    if (hart == 0)
        puts_uart("failing on purpose\n");
    return 7;
}
