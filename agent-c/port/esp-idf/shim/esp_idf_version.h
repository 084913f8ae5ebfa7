/* shim: esp_idf_version.h. The real header defines the version it ships
 * with; here it is v5.5.0 unless the build sets SHIM_IDF_VERSION_MAJOR/
 * _MINOR/_PATCH (make test compiles the port for older versions too). */
#ifndef SHIM_ESP_IDF_VERSION_H
#define SHIM_ESP_IDF_VERSION_H
#ifdef SHIM_IDF_VERSION_MAJOR
#define ESP_IDF_VERSION_MAJOR SHIM_IDF_VERSION_MAJOR
#define ESP_IDF_VERSION_MINOR SHIM_IDF_VERSION_MINOR
#define ESP_IDF_VERSION_PATCH SHIM_IDF_VERSION_PATCH
#else
#define ESP_IDF_VERSION_MAJOR 5
#define ESP_IDF_VERSION_MINOR 5
#define ESP_IDF_VERSION_PATCH 0
#endif
#define ESP_IDF_VERSION_VAL(major, minor, patch) ((major << 16) | (minor << 8) | (patch))
#define ESP_IDF_VERSION \
    ESP_IDF_VERSION_VAL(ESP_IDF_VERSION_MAJOR, ESP_IDF_VERSION_MINOR, ESP_IDF_VERSION_PATCH)
#endif
