-- Forward every stable series to dicom-synth, except the synthetic series it sent us.
function OnStableSeries(seriesId, tags, metadata)
  local instances = ParseJson(RestApiGet('/series/' .. seriesId .. '/instances'))
  if #instances == 0 then return end
  local meta = ParseJson(RestApiGet('/instances/' .. instances[1]['ID'] .. '/metadata?expand'))
  if meta['RemoteAET'] == 'SYNTH' then return end
  RestApiPost('/modalities/SYNTH/store', DumpJson({Resources = {seriesId}, Asynchronous = true}))
end
