#include "hyperion_io_uring.h"
VALUE hio_cHotpathRing;
void hio_init_hotpath_class(void) {}
