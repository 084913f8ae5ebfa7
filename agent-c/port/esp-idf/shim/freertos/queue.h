/* shim: freertos/queue.h (subset; xQueueCreate/xQueueSend are macros upstream) */
#ifndef SHIM_FREERTOS_QUEUE_H
#define SHIM_FREERTOS_QUEUE_H
#include "FreeRTOS.h"
typedef struct QueueDefinition *QueueHandle_t;
QueueHandle_t xQueueCreate(UBaseType_t uxQueueLength, UBaseType_t uxItemSize);
BaseType_t xQueueSend(QueueHandle_t xQueue, const void *const pvItemToQueue,
                      TickType_t xTicksToWait);
BaseType_t xQueueReceive(QueueHandle_t xQueue, void *const pvBuffer, TickType_t xTicksToWait);
UBaseType_t uxQueueMessagesWaiting(const QueueHandle_t xQueue);
#endif
