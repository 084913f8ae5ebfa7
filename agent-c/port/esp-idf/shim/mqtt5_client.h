/* shim: mqtt5_client.h of esp-mqtt (subset), included by mqtt_client.h
 * only with CONFIG_MQTT_PROTOCOL_5, as the real one. */
#ifndef SHIM_MQTT5_CLIENT_H
#define SHIM_MQTT5_CLIENT_H
#include "mqtt_client.h"
typedef struct esp_mqtt_client *esp_mqtt5_client_handle_t;
typedef struct mqtt5_user_property_list_t *mqtt5_user_property_handle_t;
typedef struct esp_mqtt5_event_property_s esp_mqtt5_event_property_t; /* opaque here */
typedef struct {
    uint32_t session_expiry_interval;
    uint32_t maximum_packet_size;
    uint16_t receive_maximum;
    uint16_t topic_alias_maximum;
    bool request_resp_info;
    bool request_problem_info;
    mqtt5_user_property_handle_t user_property;
} esp_mqtt5_connection_property_config_t;
esp_err_t esp_mqtt5_client_set_connect_property(
    esp_mqtt5_client_handle_t client,
    const esp_mqtt5_connection_property_config_t *connect_property);
#endif
