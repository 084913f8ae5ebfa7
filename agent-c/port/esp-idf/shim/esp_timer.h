/* shim: esp_timer.h (subset) */
#ifndef SHIM_ESP_TIMER_H
#define SHIM_ESP_TIMER_H
#include <stdint.h>
int64_t esp_timer_get_time(void);
#endif
