/* shim: esp_log.h (subset: the logging macros, checked like printf) */
#ifndef SHIM_ESP_LOG_H
#define SHIM_ESP_LOG_H
void esp_log_write_shim(const char *tag, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
#define ESP_LOGE(tag, ...) esp_log_write_shim(tag, __VA_ARGS__)
#define ESP_LOGW(tag, ...) esp_log_write_shim(tag, __VA_ARGS__)
#define ESP_LOGI(tag, ...) esp_log_write_shim(tag, __VA_ARGS__)
#define ESP_LOGD(tag, ...) esp_log_write_shim(tag, __VA_ARGS__)
#endif
