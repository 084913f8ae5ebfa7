/* shim: freertos/task.h (subset; xTaskCreate is an inline wrapper upstream) */
#ifndef SHIM_FREERTOS_TASK_H
#define SHIM_FREERTOS_TASK_H
#include "FreeRTOS.h"
typedef struct tskTaskControlBlock *TaskHandle_t;
typedef void (*TaskFunction_t)(void *);
BaseType_t xTaskCreate(TaskFunction_t pxTaskCode, const char *const pcName,
                       const uint32_t usStackDepth, void *const pvParameters,
                       UBaseType_t uxPriority, TaskHandle_t *const pxCreatedTask);
void vTaskDelay(const TickType_t xTicksToDelay);
UBaseType_t uxTaskGetStackHighWaterMark(TaskHandle_t xTask);
#endif
