/* ext_none.c - otamq-agent has no extension (app_ext.h). */
#include "app_ext.h"

const ota_ext_t *const ota_app_ext = NULL;
