/* shim: protocol_examples_common.h (ESP-IDF examples' connect helper) */
#ifndef SHIM_PROTOCOL_EXAMPLES_COMMON_H
#define SHIM_PROTOCOL_EXAMPLES_COMMON_H
#include "esp_err.h"
esp_err_t example_connect(void);
#endif
